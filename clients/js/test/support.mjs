// Test support: start the repository's Rust example servers (never a mock) and wait on clients.
//
// The binaries are the ones `cargo build --examples` (or `cargo test`) leaves in
// `${CARGO_TARGET_DIR:-<repo>/target}/debug/examples/`: `documents` (protocol v1 over a
// WebSocket) and `socketio_documents` (the Socket.IO adapter). OCCUPANCY_EXAMPLES_DIR overrides
// the directory.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** Where the example binaries are. */
export function examplesDir() {
  if (process.env.OCCUPANCY_EXAMPLES_DIR) return process.env.OCCUPANCY_EXAMPLES_DIR;
  const target = process.env.CARGO_TARGET_DIR || 'target';
  return join(isAbsolute(target) ? target : join(repo, target), 'debug', 'examples');
}

// The servers die with the tests, also when the tests are interrupted (a timeout's SIGTERM).
const live = new Set();
const killAll = () => {
  for (const p of live) p.kill('SIGKILL');
};
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    killAll();
    process.exit(1);
  });
}

/**
 * A running example server. `start()` launches it (on `port`, or a free one the first time:
 * the example binds 127.0.0.1:$PORT and PORT=0 lets the OS choose) and resolves once it listens;
 * `kill()` ends it at once (SIGKILL: no graceful shutdown, like a crash).
 */
export class Server {
  constructor(name, env = {}) {
    this.name = name;
    this.env = env;
    this.port = 0;
    this.proc = null;
    this.log = '';
  }

  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  get ws() {
    return `ws://127.0.0.1:${this.port}/occupancy`;
  }

  async start() {
    const bin = join(examplesDir(), this.name);
    if (!existsSync(bin)) {
      throw new Error(
        `${bin} is missing: build it first (cargo build --example ${this.name}; ` +
          'set CARGO_TARGET_DIR or OCCUPANCY_EXAMPLES_DIR if the target directory is elsewhere)',
      );
    }
    const proc = spawn(bin, [], {
      env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1', ...this.env, PORT: String(this.port) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    live.add(proc);
    proc.on('exit', () => live.delete(proc));
    const listening = new Promise((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`${this.name} did not listen within 20 s:\n${this.log}`)), 20000);
      const onData = (chunk) => {
        this.log += chunk;
        // "documents demo on http://127.0.0.1:PORT/" / "Server is running on http://127.0.0.1:PORT"
        const m = /on http:\/\/127\.0\.0\.1:(\d+)/.exec(this.log.replace(/\x1b\[[0-9;]*m/g, ''));
        if (m) {
          clearTimeout(timer);
          this.port = Number(m[1]);
          ok();
        }
      };
      proc.stdout.setEncoding('utf8').on('data', onData);
      proc.stderr.setEncoding('utf8').on('data', onData);
      proc.on('exit', (code, signal) => {
        clearTimeout(timer);
        fail(new Error(`${this.name} exited (${code ?? signal}) before listening:\n${this.log}`));
      });
    });
    await listening;
    return this;
  }

  /** Freezes the process (SIGSTOP): its connections stay up and say nothing, like a dead network. */
  freeze() {
    this.proc.kill('SIGSTOP');
  }

  /** Lets a frozen process run again (SIGCONT). */
  thaw() {
    this.proc.kill('SIGCONT');
  }

  /** Ends the process at once and waits until it is gone. */
  async kill() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise((ok) => proc.once('exit', ok));
    proc.kill('SIGKILL');
    await gone;
  }
}

/** Resolves with `what()` once it is truthy, re-checking on every `name` event of `client`. */
export function until(client, name, what, label, ms = 5000) {
  return new Promise((ok, fail) => {
    let off = () => {};
    const timer = setTimeout(() => {
      off();
      fail(new Error(`timed out after ${ms} ms waiting for ${label}`));
    }, ms);
    const check = () => {
      let v;
      try {
        v = what();
      } catch (e) {
        v = undefined;
      }
      if (v) {
        clearTimeout(timer);
        off();
        ok(v);
        return true;
      }
      return false;
    };
    if (!check()) off = client.on(name, check);
  });
}

/** Resolves with the room's view once `pred(view)` holds. */
export function view(client, room, pred, label, ms = 5000) {
  return until(
    client,
    'room',
    () => {
      const v = client.room(room);
      return v && pred(v) ? v : undefined;
    },
    `${label} (view of ${room}: ${JSON.stringify(client.room(room))})`,
    ms,
  );
}

/** Resolves with the next `name` event of `client` for which `pred` holds. */
export function next(client, name, pred = () => true, ms = 5000) {
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => {
      off();
      fail(new Error(`timed out after ${ms} ms waiting for a ${name} event`));
    }, ms);
    const off = client.on(name, (...args) => {
      if (!pred(...args)) return;
      clearTimeout(timer);
      off();
      ok(args.length > 1 ? args : args[0]);
    });
  });
}

/** Every `room` event of `client` for `room`, in order (copies of the views). */
export function record(client, room) {
  const seen = [];
  client.on('room', (r, v) => {
    if (r === room) seen.push({ ...v });
  });
  return seen;
}

let n = 0;
/** A room id no other test uses. */
export function roomId(prefix = 'doc') {
  n += 1;
  return `${prefix}-${process.pid}-${n}`;
}

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
