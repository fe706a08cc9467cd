// Words and numbers the dashboard shows, from static/format.js.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { formatAgo, formatChunks, formatEta, formatPercent, stageAndMessage, statusBadge } from '../../static/format.js';

test('formatPercent rounds down and clamps', () => {
  assert.deepEqual([0, 41.9, 99.99, 100, 140, -3, null].map(formatPercent), ['0%', '41%', '99%', '100%', '100%', '0%', '0%']);
});

test('formatEta speaks in rounded words', () => {
  const cases = [
    [null, ''],
    [-1, ''],
    [0.4, 'almost done'],
    [7, 'a few seconds left'],
    [12, 'about 10 seconds left'],
    [43, 'about 45 seconds left'],
    [61, 'about 1 minute left'],
    [150, 'about 3 minutes left'],
    [3599, 'about 1 hour left'],
    [4800, 'about 1 hour 20 minutes left'],
    [7200, 'about 2 hours left'],
    [200000, 'more than a day left'],
  ];
  for (const [seconds, words] of cases) assert.equal(formatEta(seconds), words, `eta ${seconds}`);
});

test('formatAgo counts whole units', () => {
  const cases = [
    [0, 'just now'],
    [4.9, 'just now'],
    [12, '12 seconds ago'],
    [60, '1 minute ago'],
    [7300, '2 hours ago'],
    [90000, '1 day ago'],
    [-5, 'just now'],
  ];
  for (const [age, words] of cases) assert.equal(formatAgo(1000 - age, 1000), words, `age ${age}`);
});

test('formatChunks shows done/total and failures', () => {
  assert.equal(formatChunks(null), '');
  assert.equal(formatChunks({ total: 17, completed: 10, failed: 0 }), '10/17');
  assert.equal(formatChunks({ total: 17, completed: 10, failed: 1 }), '10/17, 1 failed');
});

test('statusBadge names retrying attempts and stalled jobs', () => {
  const job = (fields) => ({ status: 'running', stalled: false, attempt: null, max_attempts: null, ...fields });
  assert.deepEqual(statusBadge(job({})), { label: 'running', tone: 'running' });
  assert.deepEqual(statusBadge(job({ stalled: true })), { label: 'stalled', tone: 'stalled' });
  assert.deepEqual(statusBadge(job({ status: 'retrying', attempt: 2, max_attempts: 3 })), {
    label: 'retrying, attempt 2/3',
    tone: 'retrying',
  });
  assert.deepEqual(statusBadge(job({ status: 'failed', stalled: true })), { label: 'failed', tone: 'failed' });
});

test('statusBadge says Cancelling… while a cancel request waits for the worker', () => {
  const job = (fields) => ({ status: 'running', stalled: false, attempt: null, max_attempts: null, cancel_requested: true, ...fields });
  assert.deepEqual(statusBadge(job({})), { label: 'Cancelling…', tone: 'cancelling' });
  assert.deepEqual(statusBadge(job({ stalled: true })), { label: 'Cancelling…', tone: 'cancelling' });
  assert.deepEqual(statusBadge(job({ status: 'cancelled' })), { label: 'cancelled', tone: 'cancelled' });
  assert.deepEqual(statusBadge(job({ status: 'completed' })), { label: 'completed', tone: 'completed' });
});

test('stageAndMessage prints a message that repeats the stage label once', () => {
  const merge = { stage: 'merge', stage_label: 'Merging OCR results', message: 'Merging OCR results' };
  assert.deepEqual(stageAndMessage(merge), { stage: 'Merging OCR results', message: '' });
  assert.deepEqual(stageAndMessage({ ...merge, message: 'Page 3 of 9' }), { stage: 'Merging OCR results', message: 'Page 3 of 9' });
  assert.deepEqual(stageAndMessage({ stage: null, stage_label: null, message: 'Hello' }), { stage: '', message: 'Hello' });
});
