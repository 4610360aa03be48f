// fleet_sim.mjs runs a k6 script's default function under node with
// stand-ins for k6's modules, as k6 would: one module instance per VU (VUs
// share no memory), each iteration on a VU picked at random, __VU set to
// that VU's number. The stand-in service keeps each device's accepted
// samples and rejects 1% of requests. It prints what it saw as JSON.
//
//   node fleet_sim.mjs SCRIPT VUS ITERATIONS KEY=VALUE...   (KEY=VALUE: __ENV)
import { readFileSync } from 'node:fs';

const [script, vus, iterations, ...env] = process.argv.slice(2);
globalThis.__ENV = Object.fromEntries(env.map((kv) => kv.split(/=(.*)/s).slice(0, 2)));
globalThis.__VU = 0;

const history = new Map(); // device -> accepted samples
const spikes = []; // history of each device when a spike reached it
let requests = 0;

const res = (status, anomalies) => ({ status, json: (key) => (key === 'anomalies' ? anomalies : undefined) });
class Metric { add() {} }
globalThis.__k6 = {
  http: {
    post(url, body) {
      requests++;
      if (Math.random() < 0.01) {
        return res(503, undefined);
      }
      const s = JSON.parse(body);
      const device = Number(s.device.replace('sensor-', ''));
      const n = history.get(device) || 0;
      const spiked = Math.abs(s.metrics.temp - (20 + (device % 17))) > 10;
      if (spiked) {
        spikes.push(n);
      }
      history.set(device, n + 1);
      return res(200, spiked ? [{ device: s.device, metric: 'temp' }] : []);
    },
  },
  k6: { check: (v, checks) => Object.values(checks).every((f) => f(v)) },
  metrics: { Counter: Metric, Rate: Metric, Trend: Metric, Gauge: Metric },
};
const stub = {
  'k6/http': 'export default globalThis.__k6.http;',
  k6: 'export const check = globalThis.__k6.k6.check;',
  'k6/metrics': 'export const { Counter, Rate, Trend, Gauge } = globalThis.__k6.metrics;',
};
const dataURL = (src) => `data:text/javascript,${encodeURIComponent(src)}`;
let src = readFileSync(script, 'utf8').replace(/from '(k6[^']*)'/g, (m, name) => {
  if (!(name in stub)) {
    throw new Error(`no stand-in for ${name}`);
  }
  return `from '${dataURL(stub[name])}'`;
});

const vu = [];
for (let v = 1; v <= Number(vus); v++) {
  vu.push(await import(dataURL(`${src}\n// VU ${v}\n`))); // a distinct URL is a distinct instance
}
for (let i = 0; i < Number(iterations); i++) {
  const v = Math.floor(Math.random() * vu.length);
  globalThis.__VU = v + 1;
  vu[v].default();
}
console.log(JSON.stringify({ requests, devices: history.size, spikes }));
