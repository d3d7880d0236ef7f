// The official phoenix.js (npm `phoenix` 1.8) in headless Chromium over the long-poll transport:
// `transport: LongPoll` joins, pushes and hears broadcasts and presence beside a WebSocket page;
// `longPollFallbackMs` falls back when WebSocket is blocked; a server restart mid-session
// reconnects and rejoins; and a page on another origin uses it only when the Origin policy
// allows that origin (CORS, with the POST's preflight).
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";

import { startServer } from "../js/support/server.js";
import { WAIT_MS, launch, screenshot, sleep, stopAll } from "./support/browser.js";

const PHOENIX_JS = path.join(path.dirname(fileURLToPath(import.meta.url)), "node_modules/phoenix/priv/static/phoenix.js");
const BLANK = '<!doctype html><meta charset="utf-8"><title>phoenix.js</title><script src="/phoenix.js"></script>';

// Courier serves the test page itself (its static_dir), so the page is of the server's own
// origin; Chromium's local-network checks also want a page that came from a real local server.
const STATIC = mkdtempSync(path.join(tmpdir(), "courier-longpoll-"));
writeFileSync(path.join(STATIC, "blank.html"), BLANK);
copyFileSync(PHOENIX_JS, path.join(STATIC, "phoenix.js"));
const CONFIG = `static_dir = ${JSON.stringify(STATIC)}\n\n[longpoll]\nwindow_ms = 2000\n`;

/** A static server of the same page on `host`, for pages of other origins than Courier's. */
async function pageServer(host) {
  const server = createServer((req, res) => {
    if (req.url === "/phoenix.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      return res.end(readFileSync(PHOENIX_JS));
    }
    res.writeHead(200, { "content-type": "text/html" });
    res.end(BLANK);
  });
  await new Promise((resolve) => server.listen(0, host, resolve));
  return { port: server.address().port, close: () => new Promise((resolve) => server.close(resolve)) };
}

/** The page at `origin` with phoenix.js loaded, and the errors it throws. */
async function phoenixPage(context, origin) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(err.message));
  await page.goto(`${origin}/blank.html`);
  await page.waitForFunction(() => typeof window.Phoenix === "object");
  return { page, errors };
}

/**
 * Connects a phoenix.js socket in the page and joins `topic` with presence; the page keeps
 * `window.t` (what the checks read): opens, joins, members, heard `new_msg` bodies, errors.
 */
async function connectAndJoin(page, { endPoint = "/socket", socketOpts = {}, longPoll = false, topic }) {
  return page.evaluate(
    async ({ endPoint, socketOpts, longPoll, topic }) => {
      const { Socket, LongPoll, Presence } = window.Phoenix;
      const opts = { ...socketOpts, reconnectAfterMs: () => 200, rejoinAfterMs: () => 200 };
      if (longPoll) opts.transport = LongPoll;
      const socket = new Socket(endPoint, opts);
      const t = { opens: 0, joins: 0, members: 0, heard: [], errors: 0, socket };
      window.t = t;
      socket.onOpen(() => t.opens++);
      socket.onError(() => t.errors++);
      socket.connect();
      const channel = socket.channel(topic, {});
      t.channel = channel;
      channel.on("new_msg", (m) => t.heard.push(m.body));
      const presence = new Presence(channel);
      presence.onSync(() => {
        t.members = presence.list().length;
      });
      channel.joinPush.receive("ok", () => t.joins++);
      await new Promise((resolve, reject) => {
        channel
          .join()
          .receive("ok", resolve)
          .receive("error", (e) => reject(new Error(`join refused: ${JSON.stringify(e)}`)))
          .receive("timeout", () => reject(new Error("join timed out")));
      });
      return socket.conn instanceof LongPoll ? "longpoll" : "websocket";
    },
    { endPoint, socketOpts, longPoll, topic },
  );
}

/** Pushes `event` from the page's channel and resolves with the reply's status and response. */
function push(page, event, payload) {
  return page.evaluate(
    ([event, payload]) =>
      new Promise((resolve) => {
        window.t.channel
          .push(event, payload)
          .receive("ok", (response) => resolve({ status: "ok", response }))
          .receive("error", (response) => resolve({ status: "error", response }))
          .receive("timeout", () => resolve({ status: "timeout" }));
      }),
    [event, payload],
  );
}

/** Waits until `predicate(window.t)` holds in the page. */
async function until(page, predicate, arg, ms = WAIT_MS) {
  await page.waitForFunction(predicate, arg, { timeout: ms, polling: 50 });
}

describe("phoenix.js over long-poll in Chromium", () => {
  let browser;
  let server;

  before(async () => {
    browser = await launch();
    server = await startServer({ config: CONFIG });
  });
  after(() => stopAll(browser, server));

  test("transport: LongPoll joins, pushes, hears broadcasts and sees presence beside a WebSocket page", async () => {
    const origin = `http://${server.addr}`;
    const poller = await phoenixPage(await browser.newContext(), origin);
    const socketPage = await phoenixPage(await browser.newContext(), origin);
    const topic = "room:browser-lp";
    assert.equal(await connectAndJoin(poller.page, { longPoll: true, topic }), "longpoll");
    assert.deepEqual(await push(poller.page, "ping", { over: "long-poll" }), { status: "ok", response: { over: "long-poll" } });

    assert.equal(await connectAndJoin(socketPage.page, { topic }), "websocket");
    await until(poller.page, () => window.t.members === 2);
    await until(socketPage.page, () => window.t.members === 2);

    await push(socketPage.page, "new_msg", { body: "from the websocket page" });
    await until(poller.page, () => window.t.heard.includes("from the websocket page"));
    await push(poller.page, "new_msg", { body: "from the long-poll page" });
    await until(socketPage.page, () => window.t.heard.includes("from the long-poll page"));

    await socketPage.page.evaluate(() => window.t.socket.disconnect());
    await until(poller.page, () => window.t.members === 1);
    await screenshot(poller.page, "longpoll-1-joined");
    assert.deepEqual(poller.errors, []);
    assert.deepEqual(socketPage.errors, []);
    await poller.page.evaluate(() => window.t.socket.disconnect());
  });

  test("longPollFallbackMs falls back to long-poll when WebSocket is blocked, and it works", async () => {
    const origin = `http://${server.addr}`;
    // Blocked by a middlebox that completes the upgrade but never passes a frame: phoenix.js's
    // health-check ping gets no answer, and it falls back.
    const silent = await browser.newContext();
    await silent.routeWebSocket(/\/socket\/websocket/, () => {});
    const dropped = await phoenixPage(silent, origin);
    const viaSilent = await connectAndJoin(dropped.page, { socketOpts: { longPollFallbackMs: 500 }, topic: "room:fallback" });
    assert.equal(viaSilent, "longpoll");
    assert.deepEqual(await push(dropped.page, "ping", { n: 1 }), { status: "ok", response: { n: 1 } });

    // A second blocked page in the same room: they hear each other through long-poll.
    const alsoSilent = await browser.newContext();
    await alsoSilent.routeWebSocket(/\/socket\/websocket/, () => {});
    const second = await phoenixPage(alsoSilent, origin);
    const viaSecond = await connectAndJoin(second.page, { socketOpts: { longPollFallbackMs: 500 }, topic: "room:fallback" });
    assert.equal(viaSecond, "longpoll");
    assert.equal(
      await second.page.evaluate(() => sessionStorage.getItem("phx:fallback:LongPoll")),
      "true",
      "phoenix.js remembers the fallback for the tab",
    );
    await until(second.page, () => window.t.members === 2);
    await push(dropped.page, "new_msg", { body: "across the fallback" });
    await until(second.page, () => window.t.heard.includes("across the fallback"));
    assert.deepEqual(dropped.errors, []);
    assert.deepEqual(second.errors, []);
    for (const p of [dropped.page, second.page]) await p.evaluate(() => window.t.socket.disconnect());
  });

  test("a server restart mid-session reconnects the long-poll socket and rejoins its channel", async () => {
    const context = await browser.newContext();
    const { page, errors } = await phoenixPage(context, `http://${server.addr}`);
    assert.equal(await connectAndJoin(page, { longPoll: true, topic: "room:restart" }), "longpoll");
    const { port } = server;
    await server.stop();
    await until(page, () => window.t.errors > 0, undefined, 15_000);
    server = await startServer({ port, config: CONFIG });
    await until(page, () => window.t.opens >= 2 && window.t.joins >= 2, undefined, 20_000);
    assert.deepEqual(await push(page, "ping", { after: "restart" }), { status: "ok", response: { after: "restart" } });
    await until(page, () => window.t.members === 1);
    assert.deepEqual(errors, []);
    await page.evaluate(() => window.t.socket.disconnect());
  });
});

describe("long-poll across origins in Chromium", () => {
  let browser;
  let server;
  const pages = [];

  before(async () => {
    browser = await launch();
    server = await startServer({ config: '[socket]\ncheck_origin = ["//localhost"]\n' });
  });
  after(async () => {
    for (const p of pages) await p.close();
    await stopAll(browser, server);
  });

  test("a page on an allowed origin uses long-poll cross-origin; a page on another origin cannot", async () => {
    const endPoint = `ws://${server.addr}/socket`;
    const allowedSite = await pageServer("127.0.0.1");
    const foreignSite = await pageServer("127.0.0.2");
    pages.push(allowedSite, foreignSite);
    const allowed = await phoenixPage(await browser.newContext(), `http://localhost:${allowedSite.port}`);
    assert.equal(await connectAndJoin(allowed.page, { endPoint, longPoll: true, topic: "room:cors" }), "longpoll");
    // A push is a POST with a content type that needs the CORS preflight.
    assert.deepEqual(await push(allowed.page, "ping", { cross: "origin" }), { status: "ok", response: { cross: "origin" } });
    assert.deepEqual(allowed.errors, []);

    const foreign = await phoenixPage(await browser.newContext(), `http://127.0.0.2:${foreignSite.port}`);
    await foreign.page.evaluate((endPoint) => {
      const { Socket, LongPoll } = window.Phoenix;
      const socket = new Socket(endPoint, { transport: LongPoll, reconnectAfterMs: () => 200 });
      window.t = { opens: 0, errors: 0 };
      socket.onOpen(() => window.t.opens++);
      socket.onError(() => window.t.errors++);
      socket.connect();
    }, endPoint);
    await until(foreign.page, () => window.t.errors >= 2);
    await sleep(300);
    assert.equal(await foreign.page.evaluate(() => window.t.opens), 0, "a refused origin never opens a session");
  });
});
