// seed.js: the original prototype's k6 scenario against POST /metric,
// unchanged in shape so its published figures can be compared.
//   k6 run -e BASE_URL=http://localhost:8080 loadtest/seed.js
import http from 'k6/http';
import { check, sleep } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:8080';

export const options = {
  stages: [
    { duration: '10s', target: 20 },
    { duration: '20s', target: 50 },
    { duration: '30s', target: 50 },
    { duration: '10s', target: 0 },
  ],
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<500'],
  },
};

export default function () {
  const body = JSON.stringify({
    rps: Math.random() * 200,
    cpu: Math.random() * 100,
    timestamp: Date.now(),
  });
  const res = http.post(`${BASE_URL}/metric`, body, {
    headers: { 'Content-Type': 'application/json' },
  });
  check(res, {
    'status is 200': (r) => r.status === 200,
    'received': (r) => r.json('status') === 'received',
  });
  sleep(0.1);
}
