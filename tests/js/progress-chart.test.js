// The chart's model, from static/progress-chart.js: what is drawn for a job's events.
import assert from 'node:assert/strict';
import test from 'node:test';

import { chartModel, describeChart, formatSpan, scales } from '../../static/progress-chart.js';

const at = (seq, fields) => ({
  job_id: 'j', seq, status: 'running', stage: null, stage_label: null, progress: 0, message: '',
  chunks: null, attempt: null, max_attempts: null, eta_seconds: null, error: null,
  created_at: 1000, updated_at: 1000 + seq * 10, ...fields,
});

test('chartModel: one point per event in seq order, whatever order they came in', () => {
  const model = chartModel([at(3, { progress: 40 }), at(1, {}), at(2, { progress: 20 })]);
  assert.deepEqual(model.points.map((p) => [p.seq, p.t, p.progress]), [[1, 1010, 0], [2, 1020, 20], [3, 1030, 40]]);
  assert.equal(model.start, 1000);
  assert.equal(model.end, 1030);
});

test('chartModel: stages become bands of time, a retry and each new failed chunk a mark', () => {
  const chunks = (failed) => ({ total: 4, completed: 1, failed, current: null });
  const model = chartModel([
    at(1, { stage: 'split', stage_label: 'Splitting' }),
    at(2, { stage: 'chunks', stage_label: 'Chunks', chunks: chunks(0) }),
    at(3, { stage: 'chunks', stage_label: 'Chunks', chunks: chunks(1), error: 'boom' }),
    at(4, { stage: 'chunks', stage_label: 'Chunks', chunks: chunks(1), error: 'boom' }),
    at(5, { status: 'retrying', stage: 'chunks', stage_label: 'Chunks', attempt: 2, max_attempts: 3 }),
    at(6, { status: 'retrying', stage: 'chunks', stage_label: 'Chunks', attempt: 2, max_attempts: 3 }),
    at(7, { stage: 'merge', stage_label: 'Merging' }),
  ]);
  assert.deepEqual(model.bands.map((b) => [b.key, b.start, b.end]), [['split', 1010, 1020], ['chunks', 1020, 1070], ['merge', 1070, 1070]]);
  assert.deepEqual(model.retries.map((r) => [r.seq, r.attempt, r.maxAttempts]), [[5, 2, 3]]);
  assert.deepEqual(model.failures.map((f) => [f.seq, f.failed, f.error]), [[3, 1, 'boom']]);
});

test('chartModel: the ETA projects from the newest point to 100 % while the job runs', () => {
  const running = chartModel([at(1, { progress: 10 }), at(2, { progress: 50, eta_seconds: 30 })]);
  assert.deepEqual(running.eta, { from: { t: 1020, progress: 50 }, to: { t: 1050, progress: 100 } });
  assert.equal(running.end, 1050);
  assert.match(describeChart(running), /^50% after 20 s, about 30 s to go/);
  const ended = chartModel([at(1, { progress: 10, eta_seconds: 30 }), at(2, { status: 'completed', progress: 100, eta_seconds: 0 })]);
  assert.equal(ended.eta, null);
});

test('scales map the time span and 0-100 % onto the plot, and spans read in words', () => {
  const { x, y } = scales({ start: 0, end: 10 }, { width: 120, height: 120, left: 10, right: 10, top: 10, bottom: 10 });
  assert.deepEqual([x(0), x(5), x(10), y(0), y(50), y(100)], [10, 60, 110, 110, 60, 10]);
  assert.deepEqual([formatSpan(12.4), formatSpan(185), formatSpan(3840)], ['12 s', '3 min 5 s', '1 h 4 min']);
});
