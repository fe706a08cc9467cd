/**
 * react-progress.js: a React hook over progress-client.js's watchJob.
 *
 * React is passed in rather than imported, so this file needs no bundler and
 * carries no React copy of its own (docs/dashboard.md):
 *
 *   import * as React from 'react';
 *   import { useProgress } from '/react-progress.js';
 *   const { snapshot, mode, error } = useProgress(jobId, { React });
 *
 * @module react-progress
 */
import { watchJob } from './progress-client.js';

const IDLE = Object.freeze({ snapshot: null, mode: 'ended', error: null });
const CONNECTING = Object.freeze({ snapshot: null, mode: 'connecting', error: null });

/**
 * Follow `jobId` while the component is mounted; returns `{snapshot, mode, error}`.
 *
 * @param {string|null|undefined} jobId nothing is followed while it is empty
 * @param {import('./react-progress').UseProgressOptions} options `React` (or
 *   `useState` and `useEffect`) plus any watchJob option
 * @returns {import('./react-progress').ProgressState}
 */
export function useProgress(jobId, options) {
  const { React, ...watchOptions } = options || {};
  const useState = watchOptions.useState || (React && React.useState);
  const useEffect = watchOptions.useEffect || (React && React.useEffect);
  if (typeof useState !== 'function' || typeof useEffect !== 'function') {
    throw new TypeError('useProgress needs { React } or { useState, useEffect } in its options');
  }
  const [state, setState] = useState(jobId ? CONNECTING : IDLE);
  const { token, baseUrl } = watchOptions;

  useEffect(() => {
    if (!jobId) {
      setState(IDLE);
      return undefined;
    }
    setState(CONNECTING);
    const handle = watchJob(jobId, {
      ...watchOptions,
      onUpdate(snapshot, source) {
        setState((current) => ({ ...current, snapshot }));
        if (watchOptions.onUpdate) watchOptions.onUpdate(snapshot, source);
      },
      onModeChange(mode, previous) {
        setState((current) => ({ ...current, mode }));
        if (watchOptions.onModeChange) watchOptions.onModeChange(mode, previous);
      },
      onError(error) {
        setState((current) => ({ ...current, error }));
        if (watchOptions.onError) watchOptions.onError(error);
      },
    });
    return () => handle.close();
    // Callers usually build `options` afresh on every render; only the job and
    // where and how we reach it decide when to subscribe again.
  }, [jobId, token, baseUrl]);

  return state;
}
