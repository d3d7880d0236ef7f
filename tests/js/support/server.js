// Spawns and stops the real `courier` binary for the phoenix.js tests.
import { spawn } from "node:child_process";
import { accessSync, mkdtempSync, rmSync, writeFileSync, constants as fsConstants } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

// tests/js is the directory of the test files; the binary lives in the repo's target/.
const TESTS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const START_TIMEOUT_MS = 10_000;
// The server waits up to its shutdown grace (10 s) for sockets to close; a healthy one takes
// milliseconds, so anything beyond a few seconds means a hang we want reported, not waited out.
const STOP_TIMEOUT_MS = 5_000;
const LOG_TAIL_LINES = 40;

// The server keeps files relative to its working directory (a SQLite database by default), so each
// test process runs its servers in a scratch directory of its own, shared across a restart.
let scratch = null;
function scratchDir() {
  scratch ??= mkdtempSync(path.join(tmpdir(), "courier-js-"));
  return scratch;
}

// Every child still running, so that a crashing test process does not leave servers behind.
const live = new Set();
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL");
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});
// A signal would otherwise end this process without running the "exit" handler above.
process.once("SIGINT", () => process.exit(130));
process.once("SIGTERM", () => process.exit(143));

export function courierBin() {
  const fromEnv = process.env.COURIER_BIN;
  const bin = fromEnv ? path.resolve(fromEnv) : path.resolve(TESTS_DIR, "../../target/debug/courier");
  try {
    accessSync(bin, fsConstants.X_OK);
  } catch {
    throw new Error(
      `courier binary not found or not executable at ${bin}. ` +
        "Run `cargo build` in the repository root first, or point COURIER_BIN at the binary.",
    );
  }
  return bin;
}

// Config files written by startServer, numbered so that servers of one process never share one.
let configs = 0;

/**
 * Starts `courier --bind 127.0.0.1:<port>` (port 0 = any free port) and resolves once it logs
 * `listening on ADDR`. `config`, if given, is TOML text written to a file in the scratch
 * directory and passed with `--config` (the `--bind` flag still wins over a `bind` in it).
 */
export async function startServer({ port = 0, config } = {}) {
  const bin = courierBin();
  const args = ["--bind", `127.0.0.1:${port}`];
  if (config !== undefined) {
    configs += 1;
    const file = path.join(scratchDir(), `courier-${configs}.toml`);
    writeFileSync(file, config);
    args.push("--config", file);
  }
  const child = spawn(bin, args, {
    cwd: scratchDir(),
    env: { ...process.env, RUST_LOG: "info" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  live.add(child);

  const log = [];
  const remember = (line) => {
    log.push(line);
    if (log.length > 500) log.shift();
  };
  createInterface({ input: child.stdout }).on("line", remember);
  const stderr = createInterface({ input: child.stderr });

  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  const tail = () => log.slice(-LOG_TAIL_LINES).join("\n");

  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`courier did not log "listening on" within ${START_TIMEOUT_MS} ms. Log:\n${tail()}`));
    }, START_TIMEOUT_MS);
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot spawn ${bin}: ${err.message}`));
    });
    stderr.on("line", (line) => {
      remember(line);
      // tracing colours its output on a terminal; strip that in case stderr ever looks like one
      const m = /listening on (\S+:\d+)/.exec(line.replace(/\x1b\[[0-9;]*m/g, ""));
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`courier exited before listening (code ${code}, signal ${signal}). Log:\n${tail()}`));
    });
  });

  let stopping = null;
  return {
    addr,
    port: Number(addr.slice(addr.lastIndexOf(":") + 1)),
    url: `ws://${addr}/socket`,
    pid: child.pid,
    log: tail,
    exited,
    /**
     * SIGTERM, then wait (bounded) for the exit. Resolves `{code, signal, ms}`; rejects if the server
     * had to be SIGKILLed, since that means its graceful shutdown hung.
     */
    stop() {
      stopping ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) return { ...(await exited), ms: 0 };
        const started = Date.now();
        child.kill("SIGTERM");
        let timer;
        const outcome = await Promise.race([
          exited,
          new Promise((resolve) => {
            timer = setTimeout(() => resolve(null), STOP_TIMEOUT_MS);
          }),
        ]);
        clearTimeout(timer);
        if (outcome) return { ...outcome, ms: Date.now() - started };
        child.kill("SIGKILL");
        await exited;
        throw new Error(`courier did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM (killed). Log:\n${tail()}`);
      })();
      return stopping;
    },
  };
}
