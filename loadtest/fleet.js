// fleet.js: a device fleet at a constant arrival rate on POST /api/v1/ingest,
// with a small share of injected spikes that must come back as anomalies.
//   k6 run -e BASE_URL=http://localhost:8080 -e RATE=2000 -e DEVICES=200 loadtest/fleet.js
//
// Spikes go only to devices that already have MIN_SAMPLES samples of
// history (default 20, like the Go generator; the service's MIN_SAMPLES
// defaults to 10): before that the detector cannot flag anything, and a
// spike there would read as a miss. Each device gets about
// RATE * DURATION / DEVICES samples in a run (12 at RATE=2000, DEVICES=10000,
// 60s), so keep DEVICES low enough for devices to warm up.
//
// VUs share no memory, so each VU owns a disjoint slice of the fleet
// (device % OWNERS == (__VU - 1) % OWNERS) and counts the samples the
// service accepted for each device it owns. With one VU per slice that
// count is the device's whole history. If k6 starts more VUs than OWNERS
// (the service is slow), VUs share a slice and each count is a lower bound,
// so a spike still never lands on a device with too little history.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:8080';
const RATE = parseInt(__ENV.RATE || '2000', 10);
const DEVICES = parseInt(__ENV.DEVICES || '10000', 10);
const SPIKE_RATE = parseFloat(__ENV.SPIKE_RATE || '0.001');
const MIN_SAMPLES = parseInt(__ENV.MIN_SAMPLES || '20', 10);
const DURATION = __ENV.DURATION || '60s';
const PRE_ALLOCATED_VUS = Math.min(200, Math.max(10, Math.ceil(RATE / 50)));
const OWNERS = Math.min(PRE_ALLOCATED_VUS, DEVICES);

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
      preAllocatedVUs: PRE_ALLOCATED_VUS,
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

// This VU's slice: devices first, first + OWNERS, ...; history[k] counts
// the accepted samples of device first + k * OWNERS. Set on the first
// iteration, since __VU is 0 in the init context k6 runs for options.
let first = -1;
let history = null;

export default function () {
  if (history === null) {
    first = (__VU - 1) % OWNERS;
    history = new Uint32Array(Math.ceil((DEVICES - first) / OWNERS));
  }
  const k = Math.floor(Math.random() * history.length);
  const device = first + k * OWNERS;
  let temp = baseline(device) + (Math.random() - 0.5);
  const spike = history[k] >= MIN_SAMPLES && Math.random() < SPIKE_RATE;
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
  // Spikes are not counted: whether the window keeps them is the
  // detector's business, and a lower bound is safe.
  if (!spike) {
    history[k]++;
  }
  const anomalies = res.json('anomalies') || [];
  anomaliesSeen.add(anomalies.length);
  if (spike) {
    const found = anomalies.some((a) => a.device === `sensor-${device}` && a.metric === 'temp');
    spikesInjected.add(1);
    spikesDetected.add(found);
    check(res, { 'injected spike reported in anomalies': () => found });
  }
}
