// Fallback, backoff and de-duplication rules of static/progress-client.js,
// driven through fake timers, EventSource and fetch (fakes.js).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import {
  DEFAULTS,
  backoffDelay,
  buildUrl,
  followedJobs,
  resumeFollowed,
  watchAll,
  watchJob,
} from '../../static/progress-client.js';
import { FakeEventSource, fakeEnv, settle, snap } from './fakes.js';

/** Start watchJob on a fake env and record everything it reports. */
function follow(jobId = 'job-1', { fetchHandler, options = {} } = {}) {
  const fake = fakeEnv({ fetchHandler });
  const seen = { updates: [], modes: [], ends: [], errors: [] };
  const handle = watchJob(jobId, {
    env: fake.env,
    onUpdate: (s, source) => seen.updates.push([s.seq, source]),
    onModeChange: (mode) => seen.modes.push(mode),
    onEnd: (s, reason) => seen.ends.push([s && s.seq, reason]),
    onError: (err) => seen.errors.push(err),
    ...options,
  });
  return { ...fake, seen, handle };
}

/** A fetch handler serving `GET /api/jobs/{id}` from a mutable snapshot with ETags. */
function jobServer(initial) {
  const server = { job: initial, status: 200, down: false };
  server.handler = (url, init) => {
    if (server.down) throw new TypeError('Failed to fetch');
    if (server.status !== 200) return { status: server.status, body: { error: 'no' } };
    const etag = `"${server.job.seq}"`;
    if (init.headers && init.headers['If-None-Match'] === etag) return { status: 304 };
    return { status: 200, body: server.job, headers: { ETag: etag } };
  };
  return server;
}

describe('backoffDelay', () => {
  test('doubles from base up to max, jittered within the upper half', () => {
    const low = [1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, 1000, 30000, () => 0));
    const high = [1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, 1000, 30000, () => 1));
    assert.deepEqual(low, [500, 1000, 2000, 4000, 8000, 15000, 15000]);
    assert.deepEqual(high, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  });

  test('never returns zero, so clients cannot retry in a tight loop', () => {
    for (let n = 0; n < 50; n += 1) assert.ok(backoffDelay(n, 1000, 30000, Math.random) >= 500);
  });
});

describe('buildUrl', () => {
  test('repeats array keys, skips nulls and trims the base slash', () => {
    assert.equal(
      buildUrl('http://hub/', '/api/events', { job: ['a', 'b c'], token: null }),
      'http://hub/api/events?job=a&job=b+c',
    );
    assert.equal(buildUrl('', '/api/jobs/x', { token: 't' }), '/api/jobs/x?token=t');
  });
});

describe('watchJob streaming', () => {
  test('delivers each seq once and goes live on the first event', () => {
    const { seen, handle } = follow();
    const es = FakeEventSource.latest();
    assert.equal(es.url, '/api/jobs/job-1/events');
    assert.equal(handle.mode, 'connecting');
    es.emit('snapshot', snap({ seq: 3 }));
    es.emit('progress', snap({ seq: 4 }));
    es.emit('progress', snap({ seq: 4 })); // replayed after a reconnect
    es.emit('progress', snap({ seq: 2 })); // older than what we have
    es.emit('progress', snap({ seq: 5 }));
    assert.deepEqual(seen.updates, [[3, 'snapshot'], [4, 'progress'], [5, 'progress']]);
    assert.deepEqual(seen.modes, ['live']);
    assert.equal(handle.snapshot.seq, 5);
  });

  test('encodes the job id and sends the token on the stream', () => {
    follow('a:b/c', { options: { token: 'tok', baseUrl: 'http://hub:1' } });
    assert.equal(FakeEventSource.latest().url, 'http://hub:1/api/jobs/a%3Ab%2Fc/events?token=tok');
  });

  test('ends on a terminal snapshot, closes the stream and forgets the job', () => {
    const { seen, handle, storage } = follow();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 1 }));
    assert.deepEqual(followedJobs({ env: { storage } }), ['job-1']);
    es.emit('progress', snap({ seq: 2, status: 'failed', error: 'boom' }));
    assert.deepEqual(seen.ends, [[2, 'failed']]);
    assert.equal(handle.mode, 'ended');
    assert.ok(es.closed);
    assert.deepEqual(followedJobs({ env: { storage } }), []);
    es.emit('end', { job_id: 'job-1', seq: 2, status: 'failed' });
    assert.equal(seen.ends.length, 1);
  });

  test('an end at a seq already shown still ends the watch (writes lost in a failover)', () => {
    const { seen, handle } = follow();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 5 }));
    // The master that held seqs 4-5 failed before its replica had them: the job went
    // on from seq 3 and completed at seq 4.
    es.emit('progress', snap({ seq: 4, status: 'completed', progress: 100 }));
    assert.deepEqual(seen.ends, [[4, 'completed']]);
    assert.equal(handle.mode, 'ended');
  });

  test('a snapshot below a seq its own response gave is a rewound job: taken (writes lost in a failover)', () => {
    const { seen } = follow();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 3 }));
    es.emit('progress', snap({ seq: 4, progress: 40 }));
    es.emit('progress', snap({ seq: 5, progress: 50 }));
    // The hub's feed came back to a job stored at seq 3: it says so, then the job's
    // next updates reuse seqs 4 and 5.
    es.emit('snapshot', snap({ seq: 3, progress: 30 }));
    es.emit('progress', snap({ seq: 4, progress: 45 }));
    assert.deepEqual(seen.updates, [
      [3, 'snapshot'], [4, 'progress'], [5, 'progress'], [3, 'snapshot'], [4, 'progress'],
    ]);
  });

  test('another write at the shown seq is taken: a rewound job reused it', () => {
    const { seen } = follow();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 5, progress: 50, updated_at: 105 }));
    es.emit('progress', snap({ seq: 5, progress: 50, updated_at: 105 })); // a repeat
    // Seqs 4-5 were lost; the job's updates reused them before the hub's read after the gap.
    es.emit('progress', snap({ seq: 5, progress: 55, updated_at: 107 }));
    assert.deepEqual(seen.updates, [
      [5, 'snapshot'],
      [5, 'progress'],
    ]);
  });

  test("a response's first snapshot below what was shown is not taken (it may trail a poll)", () => {
    const { seen } = follow();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 5 }));
    es.fail();
    es.open(); // the browser's reconnect: a new response
    es.emit('snapshot', snap({ seq: 4 }));
    es.emit('progress', snap({ seq: 6 }));
    assert.deepEqual(seen.updates.map(([seq]) => seq), [5, 6]);
  });

  test('a job deleted and created again is followed from its new seq 1', () => {
    const { seen } = follow();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 7, created_at: 100 }));
    es.emit('snapshot', snap({ seq: 1, created_at: 200 }));
    assert.deepEqual(seen.updates.map(([seq]) => seq), [7, 1]);
  });

  test('a deleted event ends the watch with reason deleted', () => {
    const { seen, handle } = follow();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 1 }));
    es.emit('deleted', snap({ seq: 1 }));
    assert.deepEqual(seen.ends, [[1, 'deleted']]);
    assert.equal(handle.mode, 'ended');
  });

  test('an end event without a terminal snapshot polls for it', async () => {
    const server = jobServer(snap({ seq: 9, status: 'completed', progress: 100 }));
    const { seen, clock } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 8 }));
    es.emit('end', { job_id: 'job-1', seq: 9, status: 'completed' });
    await clock.advance(0);
    assert.deepEqual(seen.ends, [[9, 'completed']]);
  });

  test('a throwing callback is reported and does not stop later updates', () => {
    const { seen } = follow('job-1', {
      options: {
        onUpdate: (s) => {
          seen.updates.push(s.seq);
          throw new Error('consumer bug');
        },
      },
    });
    const es = FakeEventSource.latest();
    const reported = [];
    const consoleError = console.error;
    console.error = (err) => reported.push(err.message);
    try {
      es.emit('snapshot', snap({ seq: 1 }));
      es.emit('progress', snap({ seq: 2 }));
    } finally {
      console.error = consoleError;
    }
    assert.deepEqual(seen.updates, [1, 2]);
    assert.deepEqual(reported, ['consumer bug', 'consumer bug']);
  });
});

describe('watchJob reconnecting and falling back', () => {
  test('a dropped stream shows reconnecting, then live again on open', () => {
    const { seen } = follow();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 1 }));
    es.fail();
    es.open();
    assert.deepEqual(seen.modes, ['live', 'reconnecting', 'live']);
    assert.equal(FakeEventSource.instances.length, 1, 'the browser reconnects, not us');
  });

  test(`${DEFAULTS.maxStreamErrors} errors within the window switch to polling`, async () => {
    const server = jobServer(snap({ seq: 2 }));
    const { seen, clock, fetch } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 1 }));
    for (let i = 0; i < DEFAULTS.maxStreamErrors; i += 1) {
      es.fail();
      await clock.advance(1000);
    }
    assert.ok(es.closed);
    // One read while the browser was reconnecting (after pollIntervalMs), one on falling back.
    assert.equal(fetch.calls.length, 2);
    assert.equal(seen.modes.at(-1), 'polling');
    assert.deepEqual(seen.updates.at(-1), [2, 'poll']);
  });

  test('errors spread wider than the window keep the stream', async () => {
    const server = jobServer(snap({ seq: 1 }));
    const { seen, clock, fetch } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 1 }));
    for (let i = 0; i < 5; i += 1) {
      es.fail();
      es.open();
      await clock.advance(DEFAULTS.errorWindowMs / 2);
    }
    assert.equal(FakeEventSource.instances.length, 1, 'never fell back');
    // Each reopen reads the job each poll interval (304s) until openTimeoutMs has passed.
    const perReopen = 1 + DEFAULTS.openTimeoutMs / DEFAULTS.pollIntervalMs;
    assert.equal(fetch.calls.length, 5 * perReopen);
    assert.equal(seen.modes.at(-1), 'live');
  });

  test('a stream that errors before its first event falls back at once', async () => {
    const server = jobServer(snap({ seq: 4 }));
    const { seen, clock } = follow('job-1', { fetchHandler: server.handler });
    FakeEventSource.latest().fail();
    await clock.advance(0);
    assert.deepEqual(seen.updates, [[4, 'poll']]);
    assert.deepEqual(seen.modes, ['polling']);
  });

  test('a stream that opens but never delivers (buffering proxy) falls back after openTimeoutMs', async () => {
    const server = jobServer(snap({ seq: 4 }));
    const { seen, clock } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.open();
    await clock.advance(DEFAULTS.openTimeoutMs - 1);
    assert.deepEqual(seen.updates, []);
    await clock.advance(1);
    assert.ok(es.closed);
    assert.deepEqual(seen.updates, [[4, 'poll']]);
  });

  test('polling sends If-None-Match and a 304 delivers nothing', async () => {
    const server = jobServer(snap({ seq: 4 }));
    const { seen, clock, fetch } = follow('job-1', { fetchHandler: server.handler, options: { token: 't' } });
    FakeEventSource.latest().fail();
    await clock.advance(0);
    await clock.advance(DEFAULTS.pollIntervalMs);
    assert.equal(fetch.calls.length, 2);
    assert.equal(fetch.calls[0].url, '/api/jobs/job-1?token=t');
    assert.deepEqual(fetch.calls[1].init.headers, { 'If-None-Match': '"4"' });
    assert.deepEqual(seen.updates, [[4, 'poll']]);
    server.job = snap({ seq: 6, status: 'completed', progress: 100 });
    await clock.advance(DEFAULTS.pollIntervalMs);
    assert.deepEqual(seen.ends, [[6, 'completed']]);
    const calls = fetch.calls.length;
    await clock.advance(60000);
    assert.equal(fetch.calls.length, calls, 'no polling after the end');
    assert.equal(FakeEventSource.instances.length, 1, 'no stream probe after the end');
  });

  test('failed polls back off exponentially with jitter and show reconnecting', async () => {
    const server = jobServer(snap({ seq: 4 }));
    server.down = true;
    const { seen, clock, fetch } = follow('job-1', { fetchHandler: server.handler });
    FakeEventSource.latest().fail();
    await clock.advance(40000);
    const times = fetch.calls.map((call) => call.at);
    const gaps = times.slice(1).map((t, i) => t - times[i]);
    // random() is 0.5, so each delay is 3/4 of its ceiling: 750, 1500, 3000, ...
    assert.deepEqual(gaps.slice(0, 5), [750, 1500, 3000, 6000, 12000]);
    assert.equal(seen.modes.at(-1), 'reconnecting');
    server.down = false;
    await clock.advance(30000);
    assert.equal(seen.modes.at(-1), 'polling');
    assert.deepEqual(seen.updates, [[4, 'poll']]);
  });

  test('polling keeps probing the stream and stops once it delivers', async () => {
    const server = jobServer(snap({ seq: 4 }));
    const { seen, clock, fetch } = follow('job-1', { fetchHandler: server.handler });
    FakeEventSource.latest().fail();
    await clock.advance(0);
    // First probe after 3/4 of streamRetryMs (jitter at 0.5).
    await clock.advance(DEFAULTS.streamRetryMs * 0.75 - 1);
    assert.equal(FakeEventSource.instances.length, 1);
    await clock.advance(1);
    assert.equal(FakeEventSource.instances.length, 2);
    const probe = FakeEventSource.latest();
    probe.emit('snapshot', snap({ seq: 4 })); // same seq: not delivered twice
    probe.emit('progress', snap({ seq: 5 }));
    assert.deepEqual(seen.updates, [[4, 'poll'], [5, 'progress']]);
    assert.equal(seen.modes.at(-1), 'live');
    const calls = fetch.calls.length;
    await clock.advance(60000);
    assert.equal(fetch.calls.length, calls, 'polling stopped once the stream was back');
  });

  test('a poll that succeeds after failed polls (the hub is back) probes the stream at once', async () => {
    const server = jobServer(snap({ seq: 4 }));
    const { seen, clock } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 4 }));
    server.down = true;
    for (let i = 0; i < DEFAULTS.maxStreamErrors; i += 1) es.fail(); // hub restarting
    await clock.advance(0);
    assert.equal(seen.modes.at(-1), 'reconnecting');
    assert.equal(FakeEventSource.instances.length, 1);
    server.down = false;
    await clock.advance(DEFAULTS.backoffBaseMs);
    assert.equal(FakeEventSource.instances.length, 2, 'probed without waiting streamRetryMs');
    FakeEventSource.latest().emit('snapshot', snap({ seq: 5 }));
    assert.equal(seen.modes.at(-1), 'live');
  });

  test('a failed probe waits longer before the next one', async () => {
    const server = jobServer(snap({ seq: 4 }));
    const { clock } = follow('job-1', { fetchHandler: server.handler });
    FakeEventSource.latest().fail();
    const opened = [];
    for (let step = 0; step < 200000; step += 500) {
      const before = FakeEventSource.instances.length;
      await clock.advance(500);
      if (FakeEventSource.instances.length !== before) {
        opened.push(clock.now());
        FakeEventSource.latest().fail();
      }
    }
    const gaps = opened.slice(1).map((t, i) => t - opened[i]);
    assert.deepEqual(gaps.slice(0, 3), [22500, 45000, 90000]);
  });

  test('a stream the browser closed for good learns why from a poll: 404 ends with not_found', async () => {
    const server = jobServer(snap({ seq: 1 }));
    server.status = 404;
    const { seen, clock, handle } = follow('job-1', { fetchHandler: server.handler });
    FakeEventSource.latest().fail({ final: true });
    await clock.advance(0);
    assert.equal(seen.errors.length, 1);
    assert.equal(seen.errors[0].kind, 'not_found');
    assert.equal(handle.mode, 'ended');
    await clock.advance(600000);
    assert.equal(FakeEventSource.instances.length, 1);
  });

  test('403 ends with forbidden', async () => {
    const server = jobServer(snap({ seq: 1 }));
    server.status = 403;
    const { seen, clock } = follow('job-1', { fetchHandler: server.handler });
    FakeEventSource.latest().fail({ final: true });
    await clock.advance(0);
    assert.deepEqual(seen.errors.map((e) => [e.kind, e.status]), [['forbidden', 403]]);
  });
});

describe('watchJob in a hidden tab', () => {
  test('stops polling an idle job while hidden and resumes on visibility', async () => {
    const server = jobServer(snap({ seq: 4 }));
    const { clock, fetch, document } = follow('job-1', { fetchHandler: server.handler });
    FakeEventSource.latest().fail();
    await clock.advance(0);
    document.setVisibility('hidden');
    await clock.advance(DEFAULTS.idlePauseMs + DEFAULTS.pollIntervalMs * 2);
    const paused = fetch.calls.length;
    await clock.advance(300000);
    assert.equal(fetch.calls.length, paused, 'no poll while hidden and idle');
    assert.equal(clock.timers.size, 0, 'no timer left running');
    server.job = snap({ seq: 5 });
    document.setVisibility('visible');
    await clock.advance(0);
    assert.equal(fetch.calls.length, paused + 1);
  });

  test('keeps polling a hidden job that is still moving', async () => {
    const server = jobServer(snap({ seq: 1 }));
    const { clock, fetch, document } = follow('job-1', { fetchHandler: server.handler });
    FakeEventSource.latest().fail();
    await clock.advance(0);
    document.setVisibility('hidden');
    for (let seq = 2; seq < 60; seq += 1) {
      server.job = snap({ seq });
      await clock.advance(DEFAULTS.pollIntervalMs * 1.1);
    }
    assert.ok(fetch.calls.length >= 50, `polled ${fetch.calls.length} times`);
  });
});

describe('remembered jobs', () => {
  test('jobs stay remembered across a reload until they end or are closed', () => {
    const first = follow('job-1');
    const env = { ...first.env, storage: first.storage };
    const second = watchJob('job-2', { env });
    assert.deepEqual(followedJobs({ env }), ['job-1', 'job-2']);
    // "Reload": new handles from the same storage.
    const resumed = resumeFollowed({ env });
    assert.deepEqual(resumed.map((h) => h.jobId), ['job-1', 'job-2']);
    second.close();
    assert.deepEqual(followedJobs({ env }), ['job-1']);
  });

  test('two tabs sharing storage keep each other\u2019s jobs', () => {
    const tabA = follow('a');
    const env = { ...tabA.env };
    const tabB = watchJob('b', { env });
    FakeEventSource.instances[0].emit('snapshot', snap({ job_id: 'a', seq: 1, status: 'completed' }));
    assert.deepEqual(followedJobs({ env }), ['b']);
    tabB.close();
    assert.deepEqual(followedJobs({ env }), []);
  });

  test('remember: false leaves storage alone', () => {
    const { storage } = follow('job-1', { options: { remember: false } });
    assert.equal(storage.items.size, 0);
  });
});

describe('watchAll', () => {
  function followAll({ fetchHandler, options = {} } = {}) {
    const fake = fakeEnv({ fetchHandler });
    const seen = { updates: [], deletes: [], modes: [] };
    const handle = watchAll({
      env: fake.env,
      onUpdate: (s, source) => seen.updates.push([s.job_id, s.seq, source]),
      onDelete: (s) => seen.deletes.push(s.job_id),
      onModeChange: (mode) => seen.modes.push(mode),
      ...options,
    });
    return { ...fake, seen, handle };
  }

  test('de-duplicates per job across a reconnect and reports deletions', () => {
    const { seen } = followAll({ options: { jobs: ['a', 'b'], token: 't' } });
    const es = FakeEventSource.latest();
    assert.equal(es.url, '/api/events?job=a&job=b&token=t');
    es.emit('snapshot', snap({ job_id: 'a', seq: 1 }));
    es.emit('progress', snap({ job_id: 'b', seq: 1 }));
    es.emit('progress', snap({ job_id: 'a', seq: 2 }));
    es.fail();
    es.emit('snapshot', snap({ job_id: 'a', seq: 2 })); // initial state again after reconnect
    es.emit('snapshot', snap({ job_id: 'c', seq: 1 })); // not asked for
    es.emit('deleted', snap({ job_id: 'b', seq: 1 }));
    assert.deepEqual(seen.updates, [
      ['a', 1, 'snapshot'],
      ['b', 1, 'progress'],
      ['a', 2, 'progress'],
    ]);
    assert.deepEqual(seen.deletes, ['b']);
    assert.deepEqual(seen.modes, ['live', 'reconnecting', 'live']);
  });

  test("a job's snapshot below a seq the same response gave it is a rewound job: taken", () => {
    const { seen } = followAll();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ job_id: 'a', seq: 3 }));
    es.emit('progress', snap({ job_id: 'a', seq: 4 }));
    es.emit('progress', snap({ job_id: 'b', seq: 1 }));
    // After the hub's feed came back to job a stored at seq 3 (writes lost), its resync
    // says so, and the job's next update reuses seq 4.
    es.emit('snapshot', snap({ job_id: 'a', seq: 3, progress: 30 }));
    es.emit('progress', snap({ job_id: 'a', seq: 4, progress: 45 }));
    assert.deepEqual(seen.updates, [
      ['a', 3, 'snapshot'],
      ['a', 4, 'progress'],
      ['b', 1, 'progress'],
      ['a', 3, 'snapshot'],
      ['a', 4, 'progress'],
    ]);
  });

  test('an end at a seq already shown is taken once (writes lost in a failover)', () => {
    const { seen } = followAll();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ job_id: 'a', seq: 5 }));
    // The job went on from seq 3 and completed at seq 4; a later read repeats the end.
    es.emit('progress', snap({ job_id: 'a', seq: 4, status: 'completed', progress: 100 }));
    es.emit('snapshot', snap({ job_id: 'a', seq: 4, status: 'completed', progress: 100 }));
    assert.deepEqual(seen.updates, [
      ['a', 5, 'snapshot'],
      ['a', 4, 'progress'],
    ]);
  });

  test("another write at a job's shown seq is taken: a rewound job reused it", () => {
    const { seen } = followAll();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ job_id: 'a', seq: 5, updated_at: 105 }));
    // After the hub's feed came back, the job's updates that reused the lost seqs 4 and 5
    // came before its resync read (which then finds seq 5 too).
    es.emit('progress', snap({ job_id: 'a', seq: 4, updated_at: 106 }));
    es.emit('progress', snap({ job_id: 'a', seq: 5, updated_at: 107 }));
    es.emit('snapshot', snap({ job_id: 'a', seq: 5, updated_at: 107 }));
    assert.deepEqual(seen.updates, [
      ['a', 5, 'snapshot'],
      ['a', 5, 'progress'],
    ]);
  });

  test("a response's opening snapshot below what was shown is not taken", () => {
    const { seen } = followAll();
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ job_id: 'a', seq: 5 }));
    es.fail();
    es.open(); // the browser's reconnect: a new response
    es.emit('snapshot', snap({ job_id: 'b', seq: 1 }));
    es.emit('snapshot', snap({ job_id: 'a', seq: 4 })); // given nothing in this response yet
    assert.deepEqual(seen.updates, [
      ['a', 5, 'snapshot'],
      ['b', 1, 'snapshot'],
    ]);
  });

  test('an opened stream is live even before any event: a hub with no jobs sends none', () => {
    const { seen, handle } = followAll();
    FakeEventSource.latest().open();
    assert.equal(handle.mode, 'live');
    assert.deepEqual(seen.modes, ['live']);
  });

  test('falls back to polling the job list and notices jobs that are gone', async () => {
    let jobs = [snap({ job_id: 'a', seq: 3 }), snap({ job_id: 'b', seq: 1 })];
    const { seen, clock, fetch } = followAll({ fetchHandler: () => ({ body: { jobs } }) });
    FakeEventSource.latest().fail();
    await clock.advance(0);
    assert.equal(fetch.calls[0].url, '/api/jobs?limit=500');
    jobs = [snap({ job_id: 'a', seq: 4 })];
    await clock.advance(DEFAULTS.pollIntervalMs * 1.1);
    assert.deepEqual(seen.updates, [
      ['a', 3, 'poll'],
      ['b', 1, 'poll'],
      ['a', 4, 'poll'],
    ]);
    assert.deepEqual(seen.deletes, ['b']);
    assert.equal(seen.modes.at(-1), 'polling');
  });

  test('a full page of jobs does not count missing ones as deleted', async () => {
    let jobs = [snap({ job_id: 'a', seq: 1 }), snap({ job_id: 'b', seq: 1 })];
    const { seen, clock } = followAll({ fetchHandler: () => ({ body: { jobs } }), options: { limit: 2 } });
    FakeEventSource.latest().fail();
    await clock.advance(0);
    jobs = [snap({ job_id: 'c', seq: 1 }), snap({ job_id: 'a', seq: 1 })];
    await clock.advance(DEFAULTS.pollIntervalMs * 1.1);
    assert.deepEqual(seen.deletes, []);
  });

  test('close stops everything', async () => {
    const { handle, clock } = followAll();
    const es = FakeEventSource.latest();
    handle.close();
    assert.ok(es.closed);
    await settle();
    assert.equal(clock.timers.size, 0);
  });
});

// After any reconnect the client converges on the latest state within one poll
// interval or one stream reconnect, whichever comes first (docs/api.md §3).
describe('converging after a reconnect', () => {
  function followAll(fetchHandler) {
    const fake = fakeEnv({ fetchHandler });
    const seen = { updates: [], deletes: [] };
    const handle = watchAll({
      env: fake.env,
      onUpdate: (s, source) => seen.updates.push([s.job_id, s.seq, source]),
      onDelete: (s) => seen.deletes.push(s.job_id),
    });
    return { ...fake, seen, handle };
  }

  test('watchJob reads the job once a poll interval while the browser reconnects', async () => {
    const server = jobServer(snap({ seq: 2 }));
    const { seen, clock } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 2 }));
    es.fail(); // the hub restarts; its retry hint may be 15 s
    server.job = snap({ seq: 4, status: 'completed', progress: 100 });
    await clock.advance(DEFAULTS.pollIntervalMs - 1);
    assert.deepEqual(seen.ends, []);
    await clock.advance(1);
    assert.deepEqual(seen.ends, [[4, 'completed']]);
    assert.ok(es.closed);
  });

  test('watchJob reads the job when the stream reopens: a job created again at the same seq', async () => {
    const server = jobServer(snap({ seq: 3 }));
    const { seen, clock, fetch } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 3 }));
    es.fail();
    // Deleted and created again while we were away: Last-Event-ID 3 is its current
    // seq too, so the hub resumes the new job's stream with nothing to send.
    server.job = snap({ seq: 3, created_at: 200, status: 'completed', progress: 100 });
    es.open();
    await clock.advance(0);
    assert.deepEqual(seen.ends, [[3, 'completed']]);
    assert.equal(fetch.calls.length, 1);
  });

  test('watchJob reads the job in full when the stream reopens: a rewound job has its ETag', async () => {
    const server = jobServer(snap({ seq: 5, progress: 50, updated_at: 105 }));
    const { seen, clock, fetch } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 5, progress: 50, updated_at: 105 }));
    es.fail();
    await clock.advance(DEFAULTS.pollIntervalMs); // a read while reconnecting: ETag "5"
    // Redis lost seqs 4-5 and the job wrote them again; the browser resumes with
    // Last-Event-ID 5, the job's current seq, so the hub has nothing to send.
    server.job = snap({ seq: 5, progress: 55, updated_at: 107 });
    es.open();
    await clock.advance(0);
    assert.deepEqual(seen.updates.at(-1), [5, 'poll']);
    assert.ok(fetch.calls.every((call) => !call.init.headers['If-None-Match']));
  });

  test('watchJob reads a silent reopened stream until openTimeoutMs, then trusts it', async () => {
    const server = jobServer(snap({ seq: 3 }));
    const { seen, clock, fetch } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 3 }));
    es.fail();
    es.open(); // resumed with Last-Event-ID 3: the hub's opening may be late, or nothing
    await clock.advance(0);
    assert.equal(fetch.calls.length, 1);
    server.job = snap({ seq: 4, progress: 50 }); // published while the opening is late
    await clock.advance(DEFAULTS.pollIntervalMs);
    assert.deepEqual(seen.updates.at(-1), [4, 'poll']);
    es.emit('progress', snap({ seq: 4, progress: 50 })); // the stream catches up
    const settled = fetch.calls.length;
    await clock.advance(DEFAULTS.openTimeoutMs * 3);
    assert.equal(fetch.calls.length, settled, 'no reads once the stream delivers');
  });

  test('watchJob stops reading an idle reopened stream after openTimeoutMs', async () => {
    const server = jobServer(snap({ seq: 3 }));
    const { clock, fetch, seen } = follow('job-1', { fetchHandler: server.handler });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ seq: 3 }));
    es.fail();
    es.open();
    await clock.advance(DEFAULTS.openTimeoutMs * 3);
    assert.equal(fetch.calls.length, 1 + DEFAULTS.openTimeoutMs / DEFAULTS.pollIntervalMs);
    assert.equal(seen.modes.at(-1), 'live');
    assert.equal(FakeEventSource.instances.length, 1);
  });

  test('watchAll falls back when a reopened stream never brings its opening', async () => {
    const jobs = [snap({ job_id: 'a', seq: 1 })];
    const { clock, handle } = followAll(() => ({ body: { jobs } }));
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ job_id: 'a', seq: 1 }));
    es.fail();
    es.open();
    await clock.advance(DEFAULTS.openTimeoutMs + DEFAULTS.pollIntervalMs);
    assert.ok(es.closed);
    assert.equal(handle.mode, 'polling');
  });

  test('watchAll reads the list on reopen and until the stream brings its opening', async () => {
    let jobs = [snap({ job_id: 'a', seq: 1 })];
    const { seen, clock, fetch } = followAll(() => ({ body: { jobs } }));
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ job_id: 'a', seq: 1 }));
    await clock.advance(0);
    const before = fetch.calls.length;
    es.fail();
    es.open(); // headers from the new hub; its opening snapshots are slow to come
    await clock.advance(0);
    assert.equal(fetch.calls.length, before + 1);
    jobs = [snap({ job_id: 'a', seq: 5, status: 'completed', progress: 100 })];
    await clock.advance(DEFAULTS.pollIntervalMs);
    assert.deepEqual(seen.updates.at(-1), ['a', 5, 'poll']);
    es.emit('snapshot', snap({ job_id: 'a', seq: 5, status: 'completed' }));
    const settled = fetch.calls.length;
    await clock.advance(DEFAULTS.pollIntervalMs * 10);
    assert.equal(fetch.calls.length, settled, 'no reads once the stream delivers');
  });

  test('watchAll drops the jobs deleted while it was away', async () => {
    let jobs = [snap({ job_id: 'a', seq: 1 }), snap({ job_id: 'b', seq: 1 })];
    const { seen, clock } = followAll(() => ({ body: { jobs } }));
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ job_id: 'a', seq: 1 }));
    es.emit('snapshot', snap({ job_id: 'b', seq: 1 }));
    await clock.advance(0);
    es.fail();
    jobs = [snap({ job_id: 'a', seq: 1 })];
    es.open();
    await clock.advance(0);
    assert.deepEqual(seen.deletes, ['b']);
  });

  test('watchAll: a list read older than the stream neither drops nor revives a job', async () => {
    const answers = [];
    const fake = fakeEnv();
    fake.env.fetch = () => new Promise((resolve) => answers.push(resolve));
    const seen = { updates: [], deletes: [] };
    watchAll({
      env: fake.env,
      onUpdate: (s) => seen.updates.push([s.job_id, s.seq]),
      onDelete: (s) => seen.deletes.push(s.job_id),
    });
    const es = FakeEventSource.latest();
    es.emit('snapshot', snap({ job_id: 'old', seq: 1 }));
    es.fail();
    es.open(); // reads the list; the answer is slow
    assert.equal(answers.length, 1);
    es.emit('progress', snap({ job_id: 'new', seq: 1 })); // created after the read
    es.emit('deleted', snap({ job_id: 'old', seq: 1 })); // deleted after the read
    answers[0](new Response(JSON.stringify({ jobs: [snap({ job_id: 'old', seq: 1 })] })));
    await settle();
    assert.deepEqual(seen.updates, [['old', 1], ['new', 1]]);
    assert.deepEqual(seen.deletes, ['old']);
  });
});

test('watchAll: a list read on its way when close() is called reports nothing', async () => {
  const answers = [];
  const fake = fakeEnv();
  fake.env.fetch = () => new Promise((resolve) => answers.push(resolve));
  const updates = [];
  const handle = watchAll({ env: fake.env, onUpdate: (s) => updates.push(s.job_id) });
  FakeEventSource.latest().open(); // reads the list
  handle.close();
  answers[0](new Response(JSON.stringify({ jobs: [snap({ job_id: 'late' })] })));
  await settle();
  assert.deepEqual(updates, []);
});
