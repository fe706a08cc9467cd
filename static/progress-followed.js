/**
 * progress-followed.js: the jobs progress-client.js follows, kept in
 * localStorage so that a reload can resume them (docs/dashboard.md). Each change reads
 * storage afresh, so several tabs share the list without losing entries.
 *
 * @module progress-followed
 */

const STORAGE_KEY = 'progress-hub:followed';
const MAX_REMEMBERED = 100;

/** The remembered `{jobId, baseUrl}` entries; [] when storage is missing or garbled. */
export function readFollowed(storage) {
  if (!storage) return [];
  try {
    const list = JSON.parse(storage.getItem(STORAGE_KEY) || '[]');
    return Array.isArray(list) ? list.filter((e) => e && typeof e.jobId === 'string') : [];
  } catch {
    return [];
  }
}

/** Store the list, newest last, dropping the oldest past MAX_REMEMBERED. */
function writeFollowed(storage, list) {
  try {
    storage.setItem(STORAGE_KEY, JSON.stringify(list.slice(-MAX_REMEMBERED)));
  } catch {
    // Quota or privacy mode: remembering is a convenience, never a failure.
  }
}

/** Add (or move to the end) one followed job. */
export function rememberJob(storage, jobId, baseUrl) {
  if (!storage) return;
  const list = readFollowed(storage).filter((e) => !(e.jobId === jobId && e.baseUrl === baseUrl));
  list.push({ jobId, baseUrl });
  writeFollowed(storage, list);
}

/** Drop one followed job, if remembered. */
export function forgetJob(storage, jobId, baseUrl) {
  if (!storage) return;
  const list = readFollowed(storage);
  const kept = list.filter((e) => !(e.jobId === jobId && e.baseUrl === baseUrl));
  if (kept.length !== list.length) writeFollowed(storage, kept);
}
