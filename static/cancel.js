/**
 * cancel.js: ask the hub to cancel a job, and whether this page may (docs/api.md §9).
 *
 * The page cannot know the hub's rule by itself (is the hub configured with a key or a
 * secret? does this token carry the cancel right? is the page loopback, or behind a
 * proxy?), so it asks `GET /api/access`, which applies the very rule of
 * `POST /api/jobs/{id}/cancel` to the page's own request.
 *
 * @module cancel
 */
import { buildUrl } from './progress-client.js';

/**
 * True when this page may cancel `jobId` (any job it lists, without one).
 * @param {{jobId?: string|null, token?: string|null}} options
 * @returns {Promise<boolean>} false when the hub cannot be asked
 */
export async function mayCancel({ jobId = null, token = null } = {}) {
  const params = { token };
  if (jobId) params.job = jobId;
  try {
    const response = await fetch(buildUrl('', '/api/access', params), { cache: 'no-store' });
    if (!response.ok) return false;
    const body = await response.json();
    return body.can_cancel === true;
  } catch {
    return false;
  }
}

/**
 * Ask the job's worker to stop; resolves with the new seq, rejects with the hub's words.
 * @param {string} jobId
 * @param {string|null} token
 * @returns {Promise<number>}
 */
export async function requestCancel(jobId, token) {
  const url = buildUrl('', `/api/jobs/${encodeURIComponent(jobId)}/cancel`, { token });
  let response;
  try {
    response = await fetch(url, { method: 'POST', cache: 'no-store' });
  } catch {
    throw new Error('The hub could not be reached. Try again.');
  }
  let body = {};
  try {
    body = await response.json();
  } catch {
    // The status alone then says what happened.
  }
  if (response.status !== 202) throw new Error(body.error || `The hub answered ${response.status}.`);
  return body.seq;
}
