/**
 * progress-connection.js: keeps one subscription alive for progress-client.js.
 *
 * Streams with EventSource; polls when the stream cannot be kept (it errors
 * repeatedly, or never delivers); probes to get the stream back; pauses idle
 * polling in hidden tabs. It knows nothing about snapshots: the watcher plugs
 * in its event handlers and its poll.
 *
 * @module progress-connection
 */

const EVENT_SOURCE_OPEN = 1;
const EVENT_SOURCE_CLOSED = 2;

/**
 * Delay before retry number `failures` (1-based): doubles from `baseMs` up to
 * `maxMs`. "Equal jitter" keeps half the delay fixed and randomises the other
 * half, so many tabs spread out after an outage yet never retry at once.
 */
export function backoffDelay(failures, baseMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, failures - 1));
  return ceiling / 2 + (random() * ceiling) / 2;
}

/**
 * Keep one logical subscription alive. Owns the EventSource, the poll loop,
 * the stream probe and the hidden-tab pause; knows nothing about snapshots.
 *
 * @param {object} spec
 * @param {object} spec.env
 * @param {object} spec.opts
 * @param {() => string} spec.streamUrl URL for a fresh EventSource
 * @param {Record<string, (data: string, earlier: number) => void>} spec.listeners SSE
 *   event type → handler, given the event's data and how many events the same response
 *   delivered before it (0: the first since the stream (re)opened)
 * @param {() => Promise<boolean>} spec.poll one poll; resolves false to stop, rejects on a transient failure
 * @param {(mode: string) => void} spec.setMode
 * @param {() => Promise<boolean>} spec.catchUp one read of the current state while the
 *   stream may owe us one (after a drop or a reopen); resolves true when the stream
 *   still owes something it has not brought (read again after a poll interval, and
 *   fall back to polling if it still owes it openTimeoutMs after opening), false when
 *   the read found nothing new; rejects on a transient failure
 * @param {boolean} [spec.liveOnOpen] the stream may stay silent after opening
 *   (the multiplexed stream of a hub with no jobs), so opening proves it works
 */
export function createConnection({ env, opts, streamUrl, listeners, poll, catchUp, setMode, liveOnOpen = false }) {
  let stream = null;
  let streamHasData = false; // the current EventSource delivered at least one event
  let responseEvents = 0; // events delivered since the stream's current response opened
  let errorTimes = [];
  let openTimer = null;
  let polling = false;
  let pollTimer = null;
  let pollFailures = 0;
  let probeTimer = null;
  let probeFailures = 0;
  let paused = false;
  let stopped = false;
  // Set from a drop or a (re)open until the stream delivers an event: meanwhile the
  // state is read every poll interval (see catchUpNow).
  let catchingUp = false;
  let catchUpTimer = null;
  let catchUpRunning = false;
  let catchUpRerun = false;
  let catchUpFailures = 0;
  let openedAt = 0;
  let lastChangeAt = env.now();

  const clear = (timer) => timer !== null && env.clearTimeout(timer);

  function openStream() {
    if (typeof env.EventSource !== 'function') {
      fallBack(); // no EventSource at all (old runtime): polling is all we have
      return;
    }
    const source = new env.EventSource(streamUrl());
    stream = source;
    streamHasData = false;
    responseEvents = 0;
    for (const [type, handler] of Object.entries(listeners)) {
      source.addEventListener(type, (event) => {
        if (source !== stream || stopped) return;
        stopCatchingUp(); // events arrive in order: from here the stream is current
        streamWorks();
        handler(event.data, responseEvents++);
      });
    }
    // The browser's own reconnect (with Last-Event-ID) may bring no event when
    // nothing was missed, so a re-opened stream that worked before counts as live.
    source.addEventListener('open', () => {
      if (source !== stream || stopped) return;
      responseEvents = 0; // the browser's reconnect is a new response
      const reopened = streamHasData;
      if (streamHasData) setMode('live');
      else if (liveOnOpen) streamWorks();
      // `open` is the response's headers: the hub has not subscribed yet, nor sent what
      // it opens with, and under load that can take long (or never come: a turned-away
      // stream). So read the state now and until the stream delivers. A fresh job
      // stream is exempt: it must open with a snapshot, which openTimeoutMs enforces.
      if (reopened || liveOnOpen) {
        openedAt = env.now();
        catchingUp = true;
        clear(catchUpTimer);
        catchUpTimer = null;
        catchUpNow();
      }
    });
    source.addEventListener('error', () => streamFailed(source));
    // A buffering proxy opens the response but never passes an event through
    // (docs/dashboard.md: "or never opens"); the hub always starts with a snapshot.
    openTimer = env.setTimeout(() => {
      openTimer = null;
      if (source === stream && !streamHasData) fallBack();
    }, opts.openTimeoutMs);
  }

  function dropStream() {
    stopCatchingUp();
    clear(openTimer);
    openTimer = null;
    if (stream) stream.close();
    stream = null;
    streamHasData = false;
  }

  function streamWorks() {
    if (!streamHasData) {
      streamHasData = true;
      clear(openTimer);
      openTimer = null;
      probeFailures = 0;
      stopPolling();
    }
    setMode('live');
  }

  function streamFailed(source) {
    if (source !== stream || stopped) return;
    // CLOSED: the browser gave up for good (a non-200 answer: 204, 403, 404, 5xx).
    // Never delivered: the path to the stream is broken. Either way a poll
    // tells us the truth right away.
    if (source.readyState === EVENT_SOURCE_CLOSED || !streamHasData) {
      fallBack();
      return;
    }
    const now = env.now();
    errorTimes = errorTimes.filter((t) => now - t < opts.errorWindowMs);
    errorTimes.push(now);
    if (errorTimes.length >= opts.maxStreamErrors) {
      errorTimes = [];
      fallBack();
      return;
    }
    setMode('reconnecting'); // the browser reconnects by itself, sending Last-Event-ID
    // Its retry delay is the hub's to choose (up to 15 s for a turned-away stream):
    // meanwhile read the state every poll interval, so that we converge either way.
    if (!catchingUp) {
      catchingUp = true;
      scheduleCatchUp(opts.pollIntervalMs);
    }
  }

  function stopCatchingUp() {
    catchingUp = false;
    catchUpRerun = false;
    clear(catchUpTimer);
    catchUpTimer = null;
  }

  function scheduleCatchUp(delay) {
    clear(catchUpTimer);
    catchUpTimer = env.setTimeout(() => {
      catchUpTimer = null;
      catchUpNow();
    }, delay);
  }

  /** One read while the stream owes us the state; again after a poll interval if it still does. */
  async function catchUpNow() {
    if (stopped || polling || !catchingUp || idleAndHidden()) return;
    if (catchUpRunning) {
      catchUpRerun = true; // a read started before this (re)open may predate it
      return;
    }
    const source = stream;
    let again = true;
    let failed = false;
    catchUpRunning = true;
    try {
      again = await catchUp();
      catchUpFailures = 0;
    } catch {
      failed = true; // the hub is away too: the next read, or the stream, will tell
      catchUpFailures += 1;
    } finally {
      catchUpRunning = false;
    }
    if (stopped || polling || !catchingUp || source !== stream) return;
    if (catchUpRerun) {
      catchUpRerun = false;
      catchUpNow();
      return;
    }
    const open = source !== null && source.readyState === EVENT_SOURCE_OPEN;
    const late = open && env.now() - openedAt >= opts.openTimeoutMs;
    if (!failed && open && again && late) {
      fallBack(); // open for openTimeoutMs and still owing what it opens with: broken
      return;
    }
    // A job stream resumed with Last-Event-ID may be silent by right (nothing missed),
    // so it is read until it has had openTimeoutMs to show it is late.
    const settled = !again && (liveOnOpen || late);
    if (!failed && open && settled) {
      catchingUp = false;
      return;
    }
    const backoff = failed ? backoffDelay(catchUpFailures, opts.backoffBaseMs, opts.backoffMaxMs, env.random) : 0;
    scheduleCatchUp(Math.max(opts.pollIntervalMs, backoff));
  }

  function fallBack() {
    dropStream();
    if (stopped) return;
    if (polling) {
      probeFailures += 1; // a probe failed: wait longer before the next one
    } else {
      polling = true;
      pollFailures = 0;
      schedulePoll(0);
    }
    scheduleProbe();
  }

  function stopPolling() {
    polling = false;
    paused = false;
    clear(pollTimer);
    clear(probeTimer);
    pollTimer = null;
    probeTimer = null;
  }

  function idleAndHidden() {
    const doc = env.document;
    return Boolean(doc) && doc.visibilityState === 'hidden' && env.now() - lastChangeAt >= opts.idlePauseMs;
  }

  function schedulePoll(delay) {
    clear(pollTimer);
    pollTimer = env.setTimeout(runPoll, delay);
  }

  async function runPoll() {
    pollTimer = null;
    if (stopped || !polling) return;
    if (idleAndHidden()) {
      paused = true;
      return;
    }
    let keepGoing;
    try {
      keepGoing = await poll();
    } catch {
      if (stopped || !polling) return;
      pollFailures += 1;
      setMode('reconnecting');
      schedulePoll(backoffDelay(pollFailures, opts.backoffBaseMs, opts.backoffMaxMs, env.random));
      return;
    }
    if (stopped || !polling || !keepGoing) return;
    if (pollFailures > 0 && !stream) {
      // Polls failed too, so the hub was away, not just the stream's path to
      // it (a restart, say): now that it answers, try the stream at once.
      clear(probeTimer);
      probeTimer = null;
      openStream();
    }
    pollFailures = 0;
    setMode('polling');
    // ±10 % so that tabs opened together do not poll in lockstep.
    schedulePoll(opts.pollIntervalMs * (0.9 + 0.2 * env.random()));
  }

  function scheduleProbe() {
    clear(probeTimer);
    const delay = backoffDelay(probeFailures + 1, opts.streamRetryMs, opts.streamRetryMaxMs, env.random);
    probeTimer = env.setTimeout(runProbe, delay);
  }

  function runProbe() {
    probeTimer = null;
    if (stopped || !polling || stream) return;
    if (idleAndHidden()) {
      paused = true;
      return;
    }
    openStream(); // polling goes on until the probe delivers its first event
  }

  function onVisibility() {
    if (!paused || stopped || env.document.visibilityState === 'hidden') return;
    paused = false;
    if (!polling) return;
    schedulePoll(0);
    if (probeTimer === null && !stream) scheduleProbe();
  }

  return {
    start() {
      if (env.document) env.document.addEventListener('visibilitychange', onVisibility);
      openStream();
    },
    /** Record that data changed, which keeps a hidden tab polling for another idle period. */
    noteChange() {
      lastChangeAt = env.now();
    },
    /** Ask for a poll now, e.g. when the stream said "end" without a terminal snapshot. */
    pollNow() {
      fallBack();
    },
    stop() {
      stopped = true;
      dropStream();
      stopPolling();
      if (env.document) env.document.removeEventListener('visibilitychange', onVisibility);
    },
  };
}
