// Turso's JavaScript sync binding (@tursodatabase/sync, pinned in package.json) in the tenants benchmark: the child
// side of benchmarks/tenants.py for JS, the same steps as its Python child (benchmarks/tenant_workload.py has the
// protocol: JSON lines on stdout, "ok" answers on stdin).
//
//   node benchmarks/js_tenants.mjs '<config as JSON>'
//
// One replica is opened, written, pushed and closed first (warm-up, not measured); a 10 ms setInterval records how
// late each tick is (the loop's lateness); N replicas are opened, at most `open_concurrency` at a time, each running
// a round (push, then pull) at once and then every interval x [0.8, 1.2]; after a warm-up, the steady window (idle,
// or a writer starting `write_rate` transactions a second on random tenants, each an INSERT in
// db.transactionAsync); then every replica is stopped and closed at once. Every wait is bounded.
import { connect } from "@tursodatabase/sync";
import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";

const config = JSON.parse(process.argv[2]);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const INSERT_SQL = "INSERT INTO notes(id, tenant, body) VALUES (?, ?, ?)";
const TICK_MS = 10;
const ROUND_JITTER = 0.2;
const ANSWER_LIMIT_MS = 120_000;
const WRITE_DRAIN_MS = 30_000;
const WARM_UP_BOUND_S = 60;
const openBound = (count) => 60 + 0.25 * count;
const closeBound = (count) => 30 + 0.06 * count;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const TIMED_OUT = Symbol("timed out");
function within(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(TIMED_OUT), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
async function bounded(promise, seconds, what) {
  const outcome = await within(promise, seconds * 1000);
  if (outcome === TIMED_OUT) throw new Error(`${what} took longer than ${seconds} s`);
  return outcome;
}

function send(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}
async function answer() {
  const got = await within(lines.next(), ANSWER_LIMIT_MS);
  if (got === TIMED_OUT || got.done || got.value.trim() !== "ok") throw new Error("the parent did not answer");
}
const phase = (name, bound_s) => send({ phase: name, bound_s });
async function mark(name) {
  send({ mark: name });
  await answer();
}

// Percentiles as the Python side computes them (statistics.median, and quantiles' "inclusive" method: linear
// interpolation between the closest ranks), in ms.
function quantile(sorted, fraction) {
  const position = (sorted.length - 1) * fraction;
  const low = Math.floor(position);
  const high = Math.min(low + 1, sorted.length - 1);
  return sorted[low] + (position - low) * (sorted[high] - sorted[low]);
}
function summary(ms) {
  if (ms.length === 0) return { count: 0, p50_ms: 0, p99_ms: 0, max_ms: 0 };
  const sorted = [...ms].sort((a, b) => a - b);
  const round = (value) => Math.round(value * 1000) / 1000;
  return {
    count: sorted.length,
    p50_ms: round(quantile(sorted, 0.5)),
    p99_ms: round(quantile(sorted, 0.99)),
    max_ms: round(sorted[sorted.length - 1]),
  };
}

// The loop's lateness: how late each 10 ms tick is (Node schedules the next from when the callback runs).
const beats = [];
let lastTick = performance.now();
let ticker = null;
function startTicker() {
  lastTick = performance.now();
  ticker = setInterval(() => {
    const now = performance.now();
    beats.push([now, now - lastTick - TICK_MS]);
    lastTick = now;
  }, TICK_MS);
}
const lateness = (start, end) => summary(beats.filter(([when]) => when > start && when <= end).map(([, ms]) => ms));

class Replica {
  constructor(db) {
    this.db = db;
    this.rounds = 0;
    this.failedRounds = 0;
    this.roundError = null;
    this.stopping = false;
    this.timer = null;
    this.current = Promise.resolve();
    this.insert = db.transactionAsync(async (txn, id, tenant) => {
      await txn.run(INSERT_SQL, id, tenant, `note ${id}`);
    });
  }

  startSync() {
    this.current = this.round();
  }

  async round() {
    try {
      await this.db.push();
      await this.db.pull();
      this.rounds += 1;
    } catch (error) {
      this.failedRounds += 1;
      this.roundError = `${error?.name ?? "Error"}: ${error?.message ?? error}`;
    }
    if (this.stopping) return;
    const delay = config.interval * 1000 * (1 - ROUND_JITTER + 2 * ROUND_JITTER * Math.random());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.current = this.round();
    }, delay);
  }

  async close() {
    this.stopping = true;
    if (this.timer !== null) clearTimeout(this.timer);
    await this.current;
    await this.db.close();
  }
}

async function openReplica(path, url) {
  return new Replica(await connect({ path, url, clientName: "bench-js-tenants" }));
}

async function openAll(count, openOne, atOnce) {
  const replicas = new Array(count);
  let next = 0;
  async function worker() {
    while (next < count) {
      const tenant = next;
      next += 1;
      replicas[tenant] = await openOne(tenant);
    }
  }
  await Promise.all(Array.from({ length: Math.min(atOnce ?? count, count) }, worker));
  return replicas;
}

async function closeAll(replicas) {
  const start = performance.now();
  await bounded(Promise.all(replicas.map((replica) => replica.close())), closeBound(replicas.length),
    `closing ${replicas.length} replicas`);
  return (performance.now() - start) / 1000;
}

// The writer: an open loop at `write_rate` a second for the window; each write's time from its own start.
async function write(replicas) {
  const acknowledged = [];
  const latencies = [];
  const errors = [];
  const tasks = [];
  const start = performance.now();
  for (let number = 0; number / config.write_rate < config.window; number += 1) {
    const wait = start + (number / config.write_rate) * 1000 - performance.now();
    if (wait > 0) await sleep(wait);
    const tenant = Math.floor(Math.random() * replicas.length);
    const id = `${config.implementation}-${tenant}-${number}`;
    tasks.push((async () => {
      const began = performance.now();
      try {
        await replicas[tenant].insert(id, tenant);
        latencies.push(performance.now() - began);
        acknowledged.push(id);
      } catch (error) {
        errors.push(`${error?.name ?? "Error"}: ${error?.message ?? error}`);
      }
    })());
  }
  return { acknowledged, latencies, errors, tasks };
}

async function main() {
  const folder = config.folder;
  const count = config.replicas;
  phase("warm-up replica", WARM_UP_BOUND_S);
  const warmUp = await openReplica(`${folder}/warm-up.db`, config.urls[0]);
  await warmUp.insert("warm-up", 0);
  await warmUp.db.push();
  await closeAll([warmUp]);
  startTicker();
  await sleep(200);
  await mark("before");

  mkdirSync(`${folder}/replicas`);
  phase("open", openBound(count));
  const openStart = performance.now();
  const replicas = await bounded(openAll(count, async (tenant) => {
    const replica = await openReplica(`${folder}/replicas/tenant-${tenant}.db`, config.urls[tenant % config.urls.length]);
    replica.startSync();
    return replica;
  }, config.open_concurrency), openBound(count), `opening ${count} replicas, ${config.open_concurrency} at a time`);
  const opened = performance.now();
  await mark("opened");
  phase("warm-up", config.warm_up + 10);
  await sleep(config.warm_up * 1000);

  phase("window", config.window + WRITE_DRAIN_MS / 1000 + 10);
  await mark("window_start");
  const windowStart = performance.now();
  const roundsStart = replicas.reduce((sum, replica) => sum + replica.rounds, 0);
  let writes = null;
  if (config.load === "active") {
    writes = await write(replicas);
  } else {
    await sleep(config.window * 1000);
  }
  const windowEnd = performance.now();
  const rounds = replicas.reduce((sum, replica) => sum + replica.rounds, 0) - roundsStart;
  await mark("window_end");
  let unfinished = 0;
  if (writes !== null) {
    let settled = 0;
    const all = writes.tasks.map((task) => task.finally(() => { settled += 1; }));
    await within(Promise.all(all), WRITE_DRAIN_MS);
    unfinished = writes.tasks.length - settled;
    phase("check", 120);
    send({ ask: "check", ids: writes.acknowledged });
    await answer();
  }
  const failures = replicas.filter((replica) => replica.failedRounds > 0).length;
  const roundErrors = [...new Set(replicas.map((replica) => replica.roundError).filter((error) => error !== null))];
  phase("close", closeBound(count));
  const closeSeconds = await closeAll(replicas);
  await sleep(500);
  await mark("closed");
  clearInterval(ticker);
  const round = (value) => Math.round(value * 1000) / 1000;
  return {
    open_s: round((opened - openStart) / 1000),
    open_lateness: lateness(openStart, opened),
    window_s: round((windowEnd - windowStart) / 1000),
    lateness: lateness(windowStart, windowEnd),
    rounds_per_replica: round(rounds / count),
    replicas_with_failures: failures,
    round_error_messages: roundErrors.sort().slice(0, 5),
    writes: summary(writes?.latencies ?? []),
    write_errors: writes?.errors.length ?? 0,
    write_error_messages: [...new Set(writes?.errors ?? [])].sort().slice(0, 5),
    writes_unfinished: unfinished,
    close_s: round(closeSeconds),
    all_at_once: null,
  };
}

try {
  const result = await main();
  // Exit once the result is written (a pipe is written asynchronously): nothing left may keep the process alive.
  process.stdout.write(JSON.stringify({ result }) + "\n", () => process.exit(0));
} catch (error) {
  process.stderr.write(`js_tenants: ${error?.stack ?? error}\n`);
  process.exit(1);
}
