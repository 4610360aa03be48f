// fleet.js: a device fleet at a constant arrival rate on POST /api/v1/ingest,
// with a small share of injected spikes that must come back as anomalies.
//   k6 run -e BASE_URL=http://localhost:8080 -e RATE=2000 -e DEVICES=10000 loadtest/fleet.js
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:8080';
const RATE = parseInt(__ENV.RATE || '2000', 10);
const DEVICES = parseInt(__ENV.DEVICES || '10000', 10);
const SPIKE_RATE = parseFloat(__ENV.SPIKE_RATE || '0.001');
const DURATION = __ENV.DURATION || '60s';

const anomaliesSeen = new Counter('anomalies_seen');
const spikesInjected = new Counter('spikes_injected');
const spikesDetected = new Rate('spikes_detected');

export const options = {
  scenarios: {
    fleet: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.min(200, Math.max(10, Math.ceil(RATE / 50))),
      maxVUs: 1000,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<500'],
  },
};

// Each device has a steady baseline of its own, so a spike stands out once
// the window has warmed up.
function baseline(device) {
  return 20 + (device % 17);
}

export default function () {
  const device = Math.floor(Math.random() * DEVICES);
  let temp = baseline(device) + (Math.random() - 0.5);
  const spike = Math.random() < SPIKE_RATE;
  if (spike) {
    temp += 50;
  }
  const body = `{"device":"sensor-${device}","metrics":{"temp":${temp.toFixed(3)},"hum":${(40 + Math.random()).toFixed(3)}}}`;
  const res = http.post(`${BASE_URL}/api/v1/ingest`, body, {
    headers: { 'Content-Type': 'application/json' },
  });
  const ok = check(res, { 'status is 200': (r) => r.status === 200 });
  if (!ok) {
    return;
  }
  const anomalies = res.json('anomalies') || [];
  anomaliesSeen.add(anomalies.length);
  if (spike) {
    // A device needs MIN_SAMPLES of history before anything can be flagged,
    // so at low per-device rates the first minute's spikes may go unseen.
    const found = anomalies.some((a) => a.device === `sensor-${device}` && a.metric === 'temp');
    spikesInjected.add(1);
    spikesDetected.add(found);
    check(res, { 'injected spike reported in anomalies': () => found });
  }
}
