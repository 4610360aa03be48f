// batch.js: batches of BATCH samples per request on POST /api/v1/ingest.
//   k6 run -e BASE_URL=http://localhost:8080 -e BATCH=100 -e RATE=200 loadtest/batch.js
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:8080';
const BATCH = parseInt(__ENV.BATCH || '100', 10);
const RATE = parseInt(__ENV.RATE || '200', 10);
const DEVICES = parseInt(__ENV.DEVICES || '10000', 10);
const DURATION = __ENV.DURATION || '60s';

const samplesSent = new Counter('samples_sent');
const anomaliesSeen = new Counter('anomalies_seen');

export const options = {
  scenarios: {
    batches: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 50,
      maxVUs: 500,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<500'],
  },
};

export default function () {
  const now = Date.now();
  const parts = [];
  for (let i = 0; i < BATCH; i++) {
    const device = Math.floor(Math.random() * DEVICES);
    const temp = 20 + (device % 17) + (Math.random() - 0.5);
    parts.push(`{"device":"sensor-${device}","ts":${now},"metrics":{"temp":${temp.toFixed(3)}}}`);
  }
  const res = http.post(`${BASE_URL}/api/v1/ingest`, `[${parts.join(',')}]`, {
    headers: { 'Content-Type': 'application/json' },
  });
  if (check(res, { 'status is 200': (r) => r.status === 200 })) {
    samplesSent.add(BATCH);
    anomaliesSeen.add((res.json('anomalies') || []).length);
  }
}
