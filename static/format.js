/**
 * format.js: turn snapshot fields into the words and numbers people read.
 * Pure functions, shared by the dashboard and tested under node --test.
 *
 * @module format
 */

const plural = (n, unit) => `${n} ${unit}${n === 1 ? '' : 's'}`;

/**
 * Whole percent, rounded down so a running job never shows 100 % early.
 * @param {number} progress 0-100
 */
export function formatPercent(progress) {
  const value = Math.max(0, Math.min(100, Number(progress) || 0));
  return `${Math.floor(value)}%`;
}

/**
 * Estimated time left in words: "about 3 minutes left".
 * @param {number|null} seconds
 */
export function formatEta(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return '';
  if (seconds < 1) return 'almost done';
  if (seconds < 10) return 'a few seconds left';
  if (seconds < 60) return `about ${plural(Math.max(10, Math.round(seconds / 5) * 5), 'second')} left`;
  if (seconds < 3570) return `about ${plural(Math.max(1, Math.round(seconds / 60)), 'minute')} left`;
  if (seconds < 86400) {
    const totalMinutes = Math.round(seconds / 60);
    const hours = Math.floor(totalMinutes / 60);
    const minutes = totalMinutes % 60;
    return `about ${plural(hours, 'hour')}${minutes ? ` ${plural(minutes, 'minute')}` : ''} left`;
  }
  return 'more than a day left';
}

/**
 * How long ago, in words: "just now", "12 seconds ago", "3 minutes ago".
 * @param {number} then Unix seconds
 * @param {number} now Unix seconds
 */
export function formatAgo(then, now) {
  const seconds = Math.max(0, now - then);
  if (seconds < 5) return 'just now';
  if (seconds < 60) return `${plural(Math.floor(seconds), 'second')} ago`;
  if (seconds < 3600) return `${plural(Math.floor(seconds / 60), 'minute')} ago`;
  if (seconds < 86400) return `${plural(Math.floor(seconds / 3600), 'hour')} ago`;
  return `${plural(Math.floor(seconds / 86400), 'day')} ago`;
}

/**
 * Chunk counters: "10/17", "10/17, 1 failed"; '' when the job has no chunks.
 * @param {{total: number, completed: number, failed: number}|null} chunks
 */
export function formatChunks(chunks) {
  if (!chunks || !chunks.total) return '';
  const done = `${chunks.completed}/${chunks.total}`;
  return chunks.failed ? `${done}, ${chunks.failed} failed` : done;
}

/**
 * The status badge: its words and the tone (a CSS class suffix) that colours it.
 * Stalled wins over running/queued, since a stuck job is what people need to see.
 * @param {{status: string, stalled: boolean, attempt: number|null, max_attempts: number|null}} job
 * @returns {{label: string, tone: string}}
 */
export function statusBadge(job) {
  // Asked to cancel, not yet ended by its worker (docs/api.md §9): that is the news.
  if (job.cancel_requested && !['completed', 'failed', 'cancelled'].includes(job.status)) {
    return { label: 'Cancelling…', tone: 'cancelling' };
  }
  if (job.stalled && (job.status === 'running' || job.status === 'queued')) {
    return { label: 'stalled', tone: 'stalled' };
  }
  if (job.status === 'retrying') {
    const of = job.max_attempts ? `/${job.max_attempts}` : '';
    return { label: job.attempt ? `retrying, attempt ${job.attempt}${of}` : 'retrying', tone: 'retrying' };
  }
  return { label: job.status, tone: job.status };
}

/**
 * The stage's words and the message, each once: a message that only repeats the
 * stage label ("Merging OCR results" twice) is left out.
 * @param {{stage_label: string|null, stage: string|null, message: string}} job
 * @returns {{stage: string, message: string}}
 */
export function stageAndMessage(job) {
  const stage = job.stage_label || job.stage || '';
  const message = job.message || '';
  return { stage, message: message.trim() === stage.trim() ? '' : message };
}

/**
 * Clock time of a Unix timestamp for the event log: "14:03:27".
 * @param {number} unixSeconds
 */
export function formatClock(unixSeconds) {
  const date = new Date(unixSeconds * 1000);
  return [date.getHours(), date.getMinutes(), date.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}
