// Stand-ins for the browser pieces progress-client.js takes through `env`:
// a manual clock with timers, a scriptable EventSource, a scripted fetch,
// a document whose visibility we flip, and an in-memory localStorage.

/** Let pending promise callbacks (an awaited fetch, a .json()) run. */
export async function settle() {
  for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

/** Timers that fire only when the test advances the clock. */
export class FakeClock {
  constructor(start = 1_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
  }

  now = () => this.time;

  setTimeout = (fn, ms) => {
    const id = this.nextId++;
    this.timers.set(id, { fn, at: this.time + Math.max(0, ms), ms });
    return id;
  };

  clearTimeout = (id) => {
    this.timers.delete(id);
  };

  /** Delays of the timers now pending, in the order they will fire. */
  pendingDelays() {
    return [...this.timers.values()].sort((a, b) => a.at - b.at).map((t) => t.ms);
  }

  /** Move time forward by `ms`, firing due timers in order and settling promises after each. */
  async advance(ms) {
    const until = this.time + ms;
    await settle();
    for (;;) {
      const due = [...this.timers.entries()]
        .filter(([, t]) => t.at <= until)
        .sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      const [id, timer] = due;
      this.timers.delete(id);
      this.time = Math.max(this.time, timer.at);
      timer.fn();
      await settle();
    }
    this.time = until;
  }
}

/** An EventSource the test drives by hand; every instance is recorded. */
export class FakeEventSource {
  static instances = [];

  static reset() {
    FakeEventSource.instances = [];
  }

  static latest() {
    return FakeEventSource.instances[FakeEventSource.instances.length - 1];
  }

  constructor(url) {
    this.url = url;
    this.readyState = 0; // CONNECTING
    this.listeners = new Map();
    this.closed = false;
    FakeEventSource.instances.push(this);
  }

  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }

  close() {
    this.readyState = 2;
    this.closed = true;
  }

  dispatch(type, event = {}) {
    for (const fn of this.listeners.get(type) || []) fn({ type, ...event });
  }

  open() {
    this.readyState = 1;
    this.dispatch('open');
  }

  /** Deliver one SSE event whose data is `payload` encoded as JSON. */
  emit(type, payload) {
    if (this.readyState !== 1) this.open();
    this.dispatch(type, { data: JSON.stringify(payload) });
  }

  /** A dropped connection; `{ final: true }` is the browser giving up (a non-200 answer). */
  fail({ final = false } = {}) {
    this.readyState = final ? 2 : 0;
    this.dispatch('error');
  }
}

/**
 * A fetch answering from `handler(url, init)`, which returns
 * `{status, body, headers}` or throws to simulate a network error.
 */
export function scriptedFetch(handler, clock) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({ url, init, at: clock ? clock.now() : null });
    const answer = handler(url, init, calls.length);
    const { status = 200, body = null, headers = {} } = answer;
    const text = body === null ? null : typeof body === 'string' ? body : JSON.stringify(body);
    return new Response(status === 304 || status === 204 ? null : text, { status, headers });
  };
  fetch.calls = calls;
  return fetch;
}

/** A document whose visibility the test flips. */
export class FakeDocument {
  constructor() {
    this.visibilityState = 'visible';
    this.listeners = new Set();
  }

  addEventListener(type, fn) {
    if (type === 'visibilitychange') this.listeners.add(fn);
  }

  removeEventListener(type, fn) {
    if (type === 'visibilitychange') this.listeners.delete(fn);
  }

  setVisibility(state) {
    this.visibilityState = state;
    for (const fn of this.listeners) fn();
  }
}

/** localStorage in memory; two clients sharing one instance act like two tabs. */
export class FakeStorage {
  constructor() {
    this.items = new Map();
  }

  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }

  setItem(key, value) {
    this.items.set(key, String(value));
  }
}

/** A full snapshot with sensible defaults. */
export function snap(fields = {}) {
  return {
    job_id: 'job-1',
    seq: 1,
    status: 'running',
    pipeline: null,
    stage: null,
    stage_label: null,
    progress: 0,
    message: '',
    chunks: null,
    attempt: null,
    max_attempts: null,
    eta_seconds: null,
    error: null,
    meta: {},
    has_result: false,
    created_at: 100,
    updated_at: 100,
    stalled: false,
    ...fields,
  };
}

/** A complete env for the client plus handles to drive it. */
export function fakeEnv({ fetchHandler = () => ({ status: 500 }), random = () => 0.5 } = {}) {
  FakeEventSource.reset();
  const clock = new FakeClock();
  const document = new FakeDocument();
  const storage = new FakeStorage();
  const fetch = scriptedFetch(fetchHandler, clock);
  return {
    clock,
    document,
    storage,
    fetch,
    env: {
      EventSource: FakeEventSource,
      fetch,
      setTimeout: clock.setTimeout,
      clearTimeout: clock.clearTimeout,
      now: clock.now,
      random,
      document,
      storage,
    },
  };
}
