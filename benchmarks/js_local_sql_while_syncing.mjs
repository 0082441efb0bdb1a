// Turso's JavaScript sync binding (@tursodatabase/sync, pinned in package.json) in the "local SQL while syncing"
// benchmark: the same scenarios as benchmarks/local_sql_while_syncing.py runs for the Python modules.
//
//   node benchmarks/js_local_sql_while_syncing.mjs '<settings as JSON>'
//
// It opens a replica of `url` (the delaying proxy) at `path`, then runs a reader and a writer side by side, each
// timing its local statements one after the other, in each scenario of `steps`: with no sync in flight ("idle", for
// reference), while a pull is in flight ("pull"), while a push is in flight ("push"), and after a pull timed out
// against the stalled remote ("stalled"). It talks to the Python side by JSON lines on stdout, each answered by one
// line "ok" on stdin: {"ask": "turn", "step": ...} before each scenario (answered when this implementation's turn
// comes), "remote_rows" (rows inserted on the remote), "hold" (the proxy stops answering) and "release" (it answers
// again); at the end one {"result": {...}} line. Every wait on the replica is bounded: the script always ends.
import { connect } from "@tursodatabase/sync";
import { createInterface } from "node:readline";

const settings = JSON.parse(process.argv[2]);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function ask(what, details = {}) {
  process.stdout.write(JSON.stringify({ ask: what, ...details }) + "\n");
  const answer = await lines.next();
  if (answer.done || answer.value.trim() !== "ok") {
    throw new Error(`the benchmark did not answer ${what}: ${answer.value}`);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Resolves to TIMED_OUT after `ms` unless `promise` settles first (the promise itself keeps running).
const TIMED_OUT = Symbol("timed out");
function within(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(TIMED_OUT), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const db = await connect({ path: settings.path, url: settings.url, clientName: "bench-js" });
const read = await db.prepare(settings.read_sql);
const write = await db.prepare(settings.write_sql);
let writes = 0;

// Statements still running after their bound (awaited, bounded, before closing).
const pending = [];

// One scenario's samples: latencies in ms, errors by message, statements that did not end within the bound.
function newSamples() {
  return { read_ms: [], write_ms: [], errors: [], read_blocked: 0, write_blocked: 0 };
}

// Time one statement; false when it did not end within `blocked_s` (it keeps running; the sampler stops).
async function timed(kind, run, samples) {
  const start = performance.now();
  const statement = run();
  statement.catch(() => {});
  let outcome;
  try {
    outcome = await within(statement, settings.blocked_s * 1000);
  } catch (error) {
    samples.errors.push(`${kind}: ${error?.message ?? error}`);
    return true;
  }
  const elapsed = performance.now() - start;
  if (outcome === TIMED_OUT) {
    samples[`${kind}_blocked`] += 1;
    samples[`${kind}_ms`].push(elapsed);
    pending.push(statement);
    return false;
  }
  samples[`${kind}_ms`].push(elapsed);
  return true;
}

// A reader and a writer side by side until `done()` says stop (each stops early at a blocked statement).
async function repeat(kind, statement, done, samples) {
  while (!done()) {
    if (!(await timed(kind, statement, samples))) return;
    await sleep(settings.interval_ms);
  }
}

async function sample(done, samples) {
  await Promise.all([
    repeat("read", () => read.get(1 + (writes % settings.kv_rows)), done, samples),
    repeat("write", () => { writes += 1; return write.run(`js ${writes}`); }, done, samples),
  ]);
}

// Local SQL while `operation` runs; the operation's own outcome too (its error as "error: ...").
async function during(operation, samples) {
  let finished = false;
  const started = performance.now();
  const running = operation()
    .then((value) => value ?? null, (error) => `error: ${error?.message ?? error}`)
    .finally(() => { finished = true; });
  await sample(() => finished, samples);
  const outcome = await within(running, settings.operation_limit_s * 1000);
  if (outcome === TIMED_OUT) throw new Error("the sync operation did not end");
  return { outcome, ms: performance.now() - started };
}

const scenarios = { idle: newSamples(), pull: newSamples(), push: newSamples(), stalled: newSamples() };
const notes = { pulled: [], pull_ms: [], push_ms: [], sync_errors: [] };
// Warm-up: the first statements of each kind pay for lazy set-up.
for (let i = 0; i < 5; i++) {
  await read.get(1);
  writes += 1;
  await write.run(`js ${writes}`);
}

const steps = {
  // For reference: no sync operation in flight.
  async idle() {
    const end = performance.now() + settings.window_s * 1000;
    await sample(() => performance.now() >= end, scenarios.idle);
  },
  async pull() {
    await ask("remote_rows");
    const pull = await during(() => db.pull(), scenarios.pull);
    notes.pulled.push(pull.outcome);
    notes.pull_ms.push(pull.ms);
    if (typeof pull.outcome === "string") notes.sync_errors.push(`pull: ${pull.outcome}`);
  },
  async push() {
    await db.exec(settings.push_rows_sql);
    const push = await during(() => db.push(), scenarios.push);
    notes.push_ms.push(push.ms);
    if (push.outcome !== null) notes.sync_errors.push(`push: ${push.outcome}`);
  },
  // The stalled remote: the proxy accepts and never answers until released.
  async stalled() {
    await ask("remote_rows");
    await ask("hold");
    const start = performance.now();
    const stuck = db.pull();
    stuck.catch(() => {});
    const first = await within(stuck, settings.stall_timeout_s * 1000);
    notes.stalled_pull_returned_ms = performance.now() - start;
    notes.stalled_pull_timed_out = first === TIMED_OUT;
    const end = performance.now() + settings.window_s * 1000;
    await sample(() => performance.now() >= end, scenarios.stalled);
    await ask("release");
    const afterRelease = await within(stuck.then((pulled) => pulled, (error) => `error: ${error?.message ?? error}`),
      settings.operation_limit_s * 1000);
    notes.stalled_pull_after_release = afterRelease === TIMED_OUT ? "still running" : afterRelease;
    for (const statement of pending) {
      await within(statement.catch(() => {}), settings.operation_limit_s * 1000);
    }
    const next = await within(db.pull().then((pulled) => pulled, (error) => `error: ${error?.message ?? error}`),
      settings.operation_limit_s * 1000);
    notes.next_pull = next === TIMED_OUT ? "did not end" : next;
    notes.replica_rows = Object.values(await (await db.prepare(settings.count_sql)).get())[0];
  },
};
// The benchmark gives each implementation its turn scenario by scenario.
for (const step of settings.steps) {
  await ask("turn", { step });
  await steps[step]();
}
const closed = await within(db.close().then(() => "closed"), settings.operation_limit_s * 1000);
notes.closed = closed === TIMED_OUT ? "close did not end" : closed;
// Exit once the result is written (a pipe is written asynchronously): a request the engine still holds open must
// not keep the process alive.
process.stdout.write(JSON.stringify({ result: { scenarios, notes } }) + "\n", () => process.exit(0));
