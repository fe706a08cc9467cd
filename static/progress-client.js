/**
 * progress-client.js: follow progress-hub jobs from a browser (docs/api.md §3).
 *
 * A dependency-free ES module. `watchJob` follows one job, `watchAll` the
 * multiplexed dashboard stream. Both stream with EventSource and fall back to
 * polling when the stream cannot be kept, then keep trying to return to it.
 *
 * Every timing decision goes through an injectable `env` (clock, timers,
 * EventSource, fetch, document, storage) so the fallback and backoff rules can
 * be unit-tested under `node --test` without a browser (tests/js/).
 *
 * It imports two siblings, progress-connection.js (stream, fallback, probes)
 * and progress-followed.js (remembered jobs): serve the three files together.
 *
 * @module progress-client
 */
import { backoffDelay, createConnection } from './progress-connection.js';
import { forgetJob, readFollowed, rememberJob } from './progress-followed.js';

export { backoffDelay };

/** Statuses after which a job accepts no further updates (docs/api.md §1). */
export const TERMINAL_STATUSES = Object.freeze(['completed', 'failed', 'cancelled']);

/** Deletions `watchAll` remembers so that a list read older than them cannot revive a job. */
const MAX_REMEMBERED_DELETIONS = 1000;

/** Default tuning; every key can be overridden per call. */
export const DEFAULTS = Object.freeze({
  baseUrl: '',
  token: null,
  /** Delay between polls while polling works. */
  pollIntervalMs: 2000,
  /** Stream errors within `errorWindowMs` that make us give up on the stream. */
  maxStreamErrors: 3,
  errorWindowMs: 30000,
  /** A fresh stream must deliver its first event within this, or we poll. */
  openTimeoutMs: 10000,
  /** Poll backoff after failures: base doubles up to max, with jitter. */
  backoffBaseMs: 1000,
  backoffMaxMs: 30000,
  /** How soon, and at most how rarely, polling tries to get the stream back. */
  streamRetryMs: 15000,
  streamRetryMaxMs: 120000,
  /** A hidden tab stops polling a job that made no progress for this long. */
  idlePauseMs: 60000,
  /** Remember followed jobs in localStorage so a reload can resume them. */
  remember: true,
});


/** A final failure: the job is unknown (`not_found`) or the token is refused (`forbidden`). */
export class ProgressError extends Error {
  /**
   * @param {'not_found'|'forbidden'} kind
   * @param {number} status HTTP status that told us
   * @param {string} message
   */
  constructor(kind, status, message) {
    super(message);
    this.name = 'ProgressError';
    this.kind = kind;
    this.status = status;
  }
}

/** True when `status` is completed, failed or cancelled. */
export function isTerminal(status) {
  return TERMINAL_STATUSES.includes(status);
}

/**
 * True when a watcher showing `shown` (null: nothing yet) has nothing to take from
 * `next`: the same job (not deleted and made again) at a seq it showed or passed. Except
 * for a job whose last writes were lost (docs/production.md, failover), which goes on
 * reusing their seqs: another write at the shown seq (each write has its own
 * `updated_at`), and an end, which is a job's last seq.
 */
function addsNothing(next, shown) {
  if (!shown || next.created_at !== shown.created_at || next.seq > shown.seq) return false;
  if (next.seq === shown.seq && next.updated_at !== shown.updated_at) return false;
  return !isTerminal(next.status) || isTerminal(shown.status);
}

/** Build `baseUrl + path` with query parameters; arrays repeat the key, nullish values are left out. */
export function buildUrl(baseUrl, path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined) continue;
    for (const item of Array.isArray(value) ? value : [value]) query.append(key, String(item));
  }
  const text = query.toString();
  return `${String(baseUrl || '').replace(/\/+$/, '')}${path}${text ? `?${text}` : ''}`;
}

/** The real browser environment; tests pass their own pieces as `options.env`. */
function browserEnv() {
  const g = globalThis;
  let storage = null;
  try {
    storage = g.localStorage || null;
  } catch {
    // Sandboxed iframes and some privacy modes throw on access: just don't remember.
  }
  return {
    EventSource: g.EventSource,
    fetch: typeof g.fetch === 'function' ? g.fetch.bind(g) : undefined,
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (id) => g.clearTimeout(id),
    now: () => Date.now(),
    random: Math.random,
    document: g.document || null,
    storage,
  };
}

function resolve(options) {
  const opts = { ...DEFAULTS, ...options };
  const env = { ...browserEnv(), ...(options.env || {}) };
  return { opts, env };
}

/** Call a user callback without letting its exception break our state machine. */
function notify(callback, ...args) {
  if (typeof callback !== 'function') return;
  try {
    callback(...args);
  } catch (err) {
    // Report like a throwing event listener would (window "error" event), but
    // keep the state machine going.
    if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
    else console.error(err);
  }
}

function parseSnapshot(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value.job_id === 'string' && Number.isInteger(value.seq) ? value : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// Public entry points.
// ---------------------------------------------------------------------------

/** Jobs remembered by `watchJob` and not yet ended or closed, oldest first. */
export function followedJobs(options = {}) {
  const { opts, env } = resolve(options);
  return readFollowed(env.storage)
    .filter((e) => e.baseUrl === opts.baseUrl)
    .map((e) => e.jobId);
}

/** Follow every remembered job again (after a reload); returns their handles. */
export function resumeFollowed(options = {}) {
  return followedJobs(options).map((jobId) => watchJob(jobId, options));
}

/**
 * Follow one job until it ends.
 *
 * Callbacks: `onUpdate(snapshot, source)` once per new seq (source is
 * `snapshot`, `progress` or `poll`), `onEnd(snapshot, reason)` when it
 * completes, fails, is cancelled or deleted, `onError(ProgressError)` when the
 * job is unknown or the token refused, `onModeChange(mode, previous)`.
 *
 * @param {string} jobId
 * @param {import('./progress-client').WatchJobOptions} [options]
 * @returns {import('./progress-client').JobHandle}
 */
export function watchJob(jobId, options = {}) {
  const { opts, env } = resolve(options);
  let mode = 'connecting';
  let snapshot = null;
  let lastSeq = 0;
  let responseSeq = 0; // the seq of the last event the stream's current response delivered
  let createdAt = null;
  let etag = null;
  let ended = false;

  const jobPath = `/api/jobs/${encodeURIComponent(jobId)}`;
  const query = () => ({ token: opts.token });

  function setMode(next) {
    if (next === mode || (ended && next !== 'ended')) return;
    const previous = mode;
    mode = next;
    notify(opts.onModeChange, next, previous);
  }

  function end(reason, finalSnapshot) {
    if (ended) return;
    connection.stop();
    setMode('ended');
    ended = true;
    if (opts.remember) forgetJob(env.storage, jobId, opts.baseUrl);
    if (reason instanceof ProgressError) notify(opts.onError, reason);
    else notify(opts.onEnd, finalSnapshot, reason);
  }

  /**
   * Deliver a snapshot once per seq; replays and poll/stream overlap repeat seqs.
   * `rewound`: the hub said the job went back to this seq (its writes were lost).
   */
  function accept(next, source, rewound = false) {
    if (!next || next.job_id !== jobId || ended) return;
    if (!rewound && addsNothing(next, snapshot)) return;
    lastSeq = next.seq;
    createdAt = next.created_at;
    snapshot = next;
    connection.noteChange();
    notify(opts.onUpdate, next, source);
    if (isTerminal(next.status)) end(next.status, next);
  }

  /** `conditional`: with If-None-Match, so that an unchanged job costs a 304. */
  async function poll(conditional = true) {
    const headers = conditional && etag ? { 'If-None-Match': etag } : {};
    const response = await env.fetch(buildUrl(opts.baseUrl, jobPath, query()), { headers, cache: 'no-store' });
    if (response.status === 304) return true;
    if (response.status === 404) {
      end(new ProgressError('not_found', 404, `Job ${jobId} is unknown or has expired.`));
      return false;
    }
    if (response.status === 401 || response.status === 403) {
      end(new ProgressError('forbidden', response.status, `The token may not read job ${jobId}.`));
      return false;
    }
    if (!response.ok) throw new Error(`GET ${jobPath} answered ${response.status}`);
    const next = parseSnapshot(await response.text());
    if (!next) throw new Error(`GET ${jobPath} answered something that is not a snapshot`);
    etag = response.headers.get('ETag') || null;
    accept(next, 'poll');
    return !ended;
  }

  const connection = createConnection({
    env,
    opts,
    // A fresh stream (no Last-Event-ID) always opens with a snapshot, which is
    // what tells a working stream from a buffered one; the seq check drops it
    // if we already had it. The browser's own reconnects send Last-Event-ID.
    streamUrl: () => buildUrl(opts.baseUrl, `${jobPath}/events`, query()),
    listeners: {
      snapshot: (data, earlier) => {
        const next = parseSnapshot(data);
        // Within one response the hub sends a snapshot below a seq it gave only when
        // the job was rewound (a failover lost its last writes: docs/production.md).
        // A response's first snapshot may trail a poll, so it proves nothing.
        const rewound = earlier > 0 && next !== null && next.seq < responseSeq;
        if (next) responseSeq = next.seq;
        accept(next, 'snapshot', rewound);
      },
      progress: (data) => {
        const next = parseSnapshot(data);
        if (next) responseSeq = next.seq; // in seq order within a response
        accept(next, 'progress');
      },
      deleted: (data) => end('deleted', parseSnapshot(data) || snapshot),
      // "end" follows the terminal progress event, so normally we have ended
      // already; if not, a poll fetches the terminal snapshot.
      end: () => connection.pollNow(),
    },
    poll,
    // After a reconnect the browser resumes with Last-Event-ID and the hub sends only
    // what we missed, possibly nothing; one read settles it, and also catches a job
    // deleted and created again meanwhile, whose seqs start over. Without If-None-Match:
    // such a job, or one rewound to our seq (writes lost), has our ETag.
    catchUp: async () => {
      const before = [lastSeq, createdAt];
      const going = await poll(false);
      return going && (lastSeq !== before[0] || createdAt !== before[1]);
    },
    setMode,
  });

  if (opts.remember) rememberJob(env.storage, jobId, opts.baseUrl);
  connection.start();

  return {
    jobId,
    get mode() {
      return mode;
    },
    get snapshot() {
      return snapshot;
    },
    close() {
      if (ended) return;
      ended = true;
      connection.stop();
      if (opts.remember) forgetJob(env.storage, jobId, opts.baseUrl);
    },
  };
}

/**
 * Follow every job (or those in `options.jobs`) on the multiplexed
 * `/api/events` stream; polls `GET /api/jobs` when the stream cannot be kept.
 *
 * Callbacks: `onUpdate(snapshot, source)` once per new seq of each job,
 * `onDelete(snapshot)`, `onModeChange(mode, previous)`, `onError(ProgressError)`.
 *
 * @param {import('./progress-client').WatchAllOptions} [options]
 * @returns {import('./progress-client').AllHandle}
 */
export function watchAll(options = {}) {
  const { opts, env } = resolve(options);
  const only = Array.isArray(opts.jobs) && opts.jobs.length ? new Set(opts.jobs) : null;
  const limit = opts.limit || 500;
  const known = new Map(); // job_id → {snapshot, stamp, response}: the shown state
  let stamps = 0; // counts accepted updates: tells what a list read may predate
  let responses = 0; // counts the stream's responses: `response` of a seq it gave
  const deleted = new Map(); // job_id → {createdAt, stamp}: deletions a list read may predate
  let mode = 'connecting';
  let closed = false;

  function setMode(next) {
    if (next === mode || closed) return;
    const previous = mode;
    mode = next;
    notify(opts.onModeChange, next, previous);
  }

  /** `rewound`: the hub said the job went back to this seq (its writes were lost). */
  function accept(next, source, rewound = false) {
    // closed: a read still on its way when close() was called reports nothing.
    if (!next || closed || (only && !only.has(next.job_id))) return;
    const seen = known.get(next.job_id);
    if (!rewound && addsNothing(next, seen ? seen.snapshot : null)) return;
    stamps += 1;
    const response = source === 'poll' ? 0 : responses;
    known.set(next.job_id, { snapshot: next, stamp: stamps, response });
    connection.noteChange();
    notify(opts.onUpdate, next, source);
  }

  function remove(gone) {
    const seen = gone && !closed && known.get(gone.job_id);
    if (!seen) return;
    known.delete(gone.job_id);
    stamps += 1;
    deleted.delete(gone.job_id);
    deleted.set(gone.job_id, { createdAt: seen.snapshot.created_at, stamp: stamps });
    if (deleted.size > MAX_REMEMBERED_DELETIONS) deleted.delete(deleted.keys().next().value);
    connection.noteChange();
    notify(opts.onDelete, gone);
  }

  async function poll() {
    const url = buildUrl(opts.baseUrl, '/api/jobs', { limit, token: opts.token });
    const issuedAt = stamps;
    const response = await env.fetch(url, { cache: 'no-store' });
    if (response.status === 401 || response.status === 403) {
      connection.stop();
      setMode('ended');
      closed = true;
      notify(opts.onError, new ProgressError('forbidden', response.status, 'The token may not list jobs.'));
      return false;
    }
    if (!response.ok) throw new Error(`GET /api/jobs answered ${response.status}`);
    const body = await response.json();
    const jobs = Array.isArray(body && body.jobs) ? body.jobs : [];
    const listed = new Set();
    for (const job of jobs) {
      listed.add(job.job_id);
      const gone = deleted.get(job.job_id);
      if (gone && gone.stamp > issuedAt && gone.createdAt === job.created_at) continue; // deleted since
      accept(job, 'poll');
    }
    for (const [jobId, gone] of [...deleted]) if (gone.stamp <= issuedAt) deleted.delete(jobId);
    // A short page is the whole set, so a job missing from it is gone; a full
    // page may just have pushed old jobs out, so we cannot tell. A job the stream
    // brought while the list was on its way is newer than the list, not gone.
    if (jobs.length < limit) {
      for (const [jobId, seen] of [...known]) {
        if (!listed.has(jobId) && seen.stamp <= issuedAt) remove(seen.snapshot);
      }
    }
    return true;
  }

  /** A handler that first counts a new response (its first event). */
  const inResponse = (handler) => (data, earlier) => {
    if (earlier === 0) responses += 1;
    handler(data);
  };

  const connection = createConnection({
    env,
    opts,
    streamUrl: () => buildUrl(opts.baseUrl, '/api/events', { job: only ? [...only] : null, token: opts.token }),
    listeners: {
      snapshot: inResponse((data) => {
        const next = parseSnapshot(data);
        // Within one response the hub sends a job's snapshot below a seq it gave that
        // job only when the job was rewound (app/delivery.py, the dashboards' resync).
        const seen = next && known.get(next.job_id);
        const shown = seen && seen.response === responses ? seen.snapshot : null;
        accept(next, 'snapshot', Boolean(shown && shown.created_at === next.created_at && next.seq < shown.seq));
      }),
      progress: inResponse((data) => accept(parseSnapshot(data), 'progress')),
      deleted: inResponse((data) => remove(parseSnapshot(data))),
    },
    poll,
    // The stream opens with a snapshot of every listed job, so while we know of jobs
    // and it has sent none since (re)opening, it still owes us the state. Each read
    // also drops the jobs deleted while we were away, which no event will tell.
    catchUp: async () => (await poll()) && known.size > 0,
    setMode,
    liveOnOpen: true,
  });
  connection.start();

  return {
    get mode() {
      return mode;
    },
    close() {
      closed = true;
      connection.stop();
    },
  };
}
