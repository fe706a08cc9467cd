// A tiny React app around useProgress, for tests/browser/test_react_progress.py.
// React and ReactDOM are the UMD globals loaded before this module.
import { useProgress } from '/react-progress.js';

const { createElement: h } = window.React;

function JobStatus({ jobId }) {
  const { snapshot, mode, error } = useProgress(jobId, { React: window.React });
  return h(
    'dl',
    null,
    h('dt', null, 'mode'),
    h('dd', { id: 'mode' }, mode),
    h('dt', null, 'progress'),
    h('dd', { id: 'progress' }, snapshot ? String(snapshot.progress) : '-'),
    h('dt', null, 'status'),
    h('dd', { id: 'status' }, snapshot ? snapshot.status : '-'),
    h('dt', null, 'error'),
    h('dd', { id: 'error' }, error ? error.kind : ''),
  );
}

const jobId = new URLSearchParams(location.search).get('job');
window.ReactDOM.createRoot(document.getElementById('root')).render(h(JobStatus, { jobId }));
