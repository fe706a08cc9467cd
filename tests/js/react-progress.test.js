// useProgress against a minimal hook runtime; tests/browser covers real React.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { useProgress } from '../../static/react-progress.js';
import { FakeEventSource, fakeEnv, snap } from './fakes.js';

/** Just enough of React to render one component: state slots and effects with deps. */
function mount(component) {
  const slots = [];
  const effects = [];
  let cursor = 0;
  let effectCursor = 0;
  let output;
  const useState = (initial) => {
    const index = cursor++;
    if (!(index in slots)) slots[index] = initial;
    const set = (next) => {
      slots[index] = typeof next === 'function' ? next(slots[index]) : next;
      render();
    };
    return [slots[index], set];
  };
  const useEffect = (effect, deps) => {
    const index = effectCursor++;
    const previous = effects[index];
    if (previous && deps.every((d, i) => Object.is(d, previous.deps[i]))) return;
    if (previous && previous.cleanup) previous.cleanup();
    effects[index] = { deps, cleanup: null };
    queueMicrotask(() => {
      effects[index].cleanup = effect() || null;
    });
  };
  let props;
  function render() {
    cursor = 0;
    effectCursor = 0;
    output = component(props, { useState, useEffect });
  }
  return {
    update(next) {
      props = next;
      render();
    },
    get output() {
      return output;
    },
    unmount() {
      for (const effect of effects) if (effect && effect.cleanup) effect.cleanup();
    },
  };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

test('useProgress follows the job and reports snapshot and mode', async () => {
  const { env, storage } = fakeEnv();
  const view = mount(({ jobId }, hooks) => useProgress(jobId, { ...hooks, env }));
  view.update({ jobId: 'job-1' });
  assert.equal(view.output.mode, 'connecting');
  await flush();
  FakeEventSource.latest().emit('snapshot', snap({ seq: 1, progress: 40 }));
  assert.equal(view.output.snapshot.progress, 40);
  assert.equal(view.output.mode, 'live');
  assert.ok(storage.getItem('progress-hub:followed').includes('job-1'));
  view.unmount();
  assert.ok(FakeEventSource.latest().closed);
  assert.equal(storage.getItem('progress-hub:followed'), '[]');
});

test('useProgress subscribes again when the job id changes', async () => {
  const { env } = fakeEnv();
  const view = mount(({ jobId }, hooks) => useProgress(jobId, { ...hooks, env }));
  view.update({ jobId: 'a' });
  await flush();
  const first = FakeEventSource.latest();
  view.update({ jobId: 'a' }); // same id, fresh options object: no new subscription
  await flush();
  assert.equal(FakeEventSource.instances.length, 1);
  view.update({ jobId: 'b' });
  await flush();
  assert.ok(first.closed);
  assert.equal(FakeEventSource.latest().url, '/api/jobs/b/events');
  assert.equal(view.output.snapshot, null);
});

test('useProgress with no job id follows nothing', async () => {
  const { env } = fakeEnv();
  const view = mount(({ jobId }, hooks) => useProgress(jobId, { ...hooks, env }));
  view.update({ jobId: null });
  await flush();
  assert.equal(FakeEventSource.instances.length, 0);
  assert.equal(view.output.mode, 'ended');
});

test('useProgress without React says what it needs', () => {
  assert.throws(() => useProgress('x', {}), /needs \{ React \}/);
});
