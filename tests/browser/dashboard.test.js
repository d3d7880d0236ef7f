// The admin dashboard at /admin in headless Chromium against the real server, beside the chat
// page in another browser context: an operator pastes the token, watches a person's connection
// arrive in the stats, finds them in the user lookup with their device online, broadcasts a
// notice that the chat page shows, and disconnects the device, which reconnects by itself.
// The tests run in order and share the two people. Screenshots go to target/screenshots/.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { startServer } from "../js/support/server.js";
import { STATIC_DIR, launch, online, person, screenshot, signUp, sleep, stopAll, WAIT_MS } from "./support/browser.js";

const stamp = Math.random().toString(36).slice(2, 7);
const TOKEN = `dashboard-token-${stamp}`;
const U = `dana${stamp}`;
// Cheap password hashing as in chat.test.js, and a token the test knows.
const CONFIG =
  `static_dir = ${JSON.stringify(STATIC_DIR)}\n\n[admin]\ntoken = ${JSON.stringify(TOKEN)}\n\n` +
  "[accounts]\nargon2_memory_kib = 64\nargon2_iterations = 1\n";
const TOKEN_KEY = "courier.admin.token";

let server;
let browser;
const people = [];
const p = {};

/** What the API says, straight from Node, to compare the page with. */
async function adminGet(path) {
  const response = await fetch(`http://${server.addr}/admin/api/${path}`, {
    headers: { Authorization: `Bearer ${TOKEN}` },
    signal: AbortSignal.timeout(WAIT_MS),
  });
  assert.equal(response.status, 200, `GET ${path}`);
  return response.json();
}

async function enterToken(page, token) {
  await page.getByLabel("Admin token", { exact: true }).fill(token);
  await page.getByRole("button", { name: "Use token" }).click();
}

const storedTokens = (page) => page.evaluate((key) => [sessionStorage.getItem(key), localStorage.getItem(key)], TOKEN_KEY);

before(async () => {
  server = await startServer({ config: CONFIG });
  browser = await launch();
  p.chat = await person(browser, server);
  p.admin = await person(browser, server);
  people.push(p.chat, p.admin);
});

after(() => stopAll(browser, server));

describe("the admin dashboard", () => {
  test("GET /admin and /admin/ both serve it", async () => {
    for (const where of ["/admin", "/admin/"]) {
      const response = await fetch(`http://${server.addr}${where}`, { redirect: "manual", signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(response.status, 200, where);
      assert.match(await response.text(), /<title>Courier admin<\/title>/, where);
    }
  });

  test("a wrong token shows the server's 401 reason and is not kept", async () => {
    // Without a slash: the page's own links are absolute, so they load from here too.
    const page = await p.admin.open("/admin");
    p.admin.page = page;
    await page.locator("#token:focus").waitFor();
    await enterToken(page, "not-the-token");
    await page.locator("#login-error", { hasText: "bad or missing admin token" }).waitFor();
    assert.match(await page.locator("#login-error").textContent(), /401 unauthorized/);
    assert.equal(await page.locator("#dashboard").isVisible(), false);
    assert.deepEqual(await storedTokens(page), [null, null]);
    await screenshot(page, "dashboard-01-wrong-token");
  });

  test("with the token, the stats count the chat page's connection", async () => {
    p.chat.page = await p.chat.open();
    // Every socket the chat page opens, so that a reconnect can be told from a socket that stayed.
    p.chat.sockets = [];
    p.chat.page.on("websocket", (ws) => p.chat.sockets.push(ws));
    await signUp(p.chat.page, U);

    const { page } = p.admin;
    await enterToken(page, TOKEN);
    await page.locator("#dashboard").waitFor();
    await page.waitForFunction(() => Number(document.getElementById("stat-sockets").textContent) >= 1);
    await page.waitForFunction(() => Number(document.getElementById("stat-users-online").textContent) >= 1);
    assert.equal(await storedTokens(page).then(([session]) => session), TOKEN);

    // A second poll has drawn a line; the caption says what the chart shows.
    await page.locator("#caption-sockets", { hasText: /^Connections: \d+ now, peak \d+/ }).waitFor();
    const stats = await adminGet("stats");
    if (stats.messages?.stored_per_sec === undefined) {
      // Nothing to draw from: the page says so rather than derive a figure.
      assert.equal(await page.locator("#stat-stored").textContent(), "n/a");
      await page.locator("#caption-messages", { hasText: "n/a" }).waitFor();
    } else {
      assert.match(await page.locator("#stat-stored").textContent(), /^\d/);
    }
    await sleep(2_500);
    await screenshot(page, "dashboard-02-stats");

    // The token is kept for the tab: a reload goes straight to the dashboard.
    await page.reload();
    await page.locator("#dashboard").waitFor();
    assert.equal(await page.locator("#login").isVisible(), false);
  });

  test("messages per second are drawn once the stats carry them", async () => {
    // Today's server has no message rates; the page is ready for the `messages` object the
    // stats are to gain, so this profile sees the real stats with one added.
    const rates = await person(browser, server);
    people.push(rates);
    let polls = 0;
    await rates.context.route("**/admin/api/stats", async (route) => {
      const response = await route.fetch();
      const stats = await response.json();
      if (response.ok()) {
        polls += 1;
        stats.messages = { stored_per_sec: 12.5, delivered_per_sec: 20 + (polls % 2) * 10 };
      }
      await route.fulfill({ response, json: stats });
    });
    const page = await rates.open("/admin/");
    await enterToken(page, TOKEN);
    await page.locator("#stat-stored", { hasText: /^12\.5$/ }).waitFor();
    await page.locator("#stat-delivered", { hasText: /^(20|30)$/ }).waitFor();
    await page.locator("#caption-messages", { hasText: /stored: 12\.5\/s now, peak 12\.5\/s .*delivered: (20|30)\/s now, peak 30\/s/ }).waitFor();
    assert.match(await page.locator("#chart-messages").getAttribute("aria-label"), /^Messages per second\. Stored: 12\.5\/s now/);
    await screenshot(page, "dashboard-02-message-rates");
    await page.close();
  });

  test("the user lookup shows the person's device online, with its cursor", async () => {
    const { page } = p.admin;
    const device = await p.chat.page.evaluate(() => localStorage.getItem("courier.device"));
    assert.match(device, /^web-/);
    p.chat.device = device;

    await page.getByLabel("Username prefix").fill(U);
    await page.getByRole("button", { name: "Find users" }).click();
    await page.locator(`#user-list li[data-user="${U}"]`).waitFor();
    await page.locator("#users-status", { hasText: `1 user starting with ${U}` }).waitFor();
    await page.getByRole("button", { name: `Devices of ${U}`, exact: true }).click();
    const row = page.locator(`#device-list li[data-device="${device}"]`);
    await row.and(page.locator('[data-online="true"]')).waitFor();
    await row.locator(".badge", { hasText: "online" }).waitFor();
    const { last_offset: last, devices } = await adminGet(`users/${encodeURIComponent(U)}/devices`);
    const acked = devices.find((d) => d.device === device).acked_offset;
    await row.locator(".count", { hasText: `acked ${acked}` }).waitFor();
    await page.locator("#devices-summary", { hasText: `log ends at offset ${last}` }).waitFor();
    await screenshot(page, "dashboard-03-user-devices");
  });

  test("the user lookup pages through more users than fit on one page", async () => {
    const { page } = p.admin;
    // One more than a page (50), made through the API itself.
    const prefix = `page${stamp}`;
    const names = Array.from({ length: 51 }, (_, i) => `${prefix}${String(i).padStart(2, "0")}`);
    for (const username of names) {
      const response = await fetch(`http://${server.addr}/admin/api/users`, {
        method: "POST",
        headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
        body: JSON.stringify({ username, password: "browser-test-password" }),
        signal: AbortSignal.timeout(WAIT_MS),
      });
      assert.equal(response.status, 201, username);
    }
    const rows = page.locator("#user-list li");
    const shown = () => rows.evaluateAll((items) => items.map((li) => li.dataset.user));
    await page.getByLabel("Username prefix").fill(prefix);
    await page.getByRole("button", { name: "Find users" }).click();
    await page.locator("#users-status", { hasText: `50 users starting with ${prefix} on this page.` }).waitFor();
    assert.deepEqual(await shown(), names.slice(0, 50));
    await page.getByRole("button", { name: "Next page" }).and(page.locator("#users-next")).click();
    await page.locator("#users-status", { hasText: `1 user starting with ${prefix}.` }).waitFor();
    assert.deepEqual(await shown(), names.slice(50));
    assert.equal(await page.locator("#users-next").isVisible(), false);
    await page.locator("#users-first").click();
    await page.locator("#users-status", { hasText: "on this page" }).waitFor();
    assert.deepEqual(await shown(), names.slice(0, 50));

    // Back to the person on the chat page, whose devices the next tests use.
    await page.getByLabel("Username prefix").fill(U);
    await page.getByRole("button", { name: "Find users" }).click();
    await page.locator(`#user-list li[data-user="${U}"]`).waitFor();
  });

  test("live topics page by prefix and show a topic's presence", async () => {
    const { page } = p.admin;
    await page.getByLabel("Topic prefix").fill(`user:${U}`);
    await page.getByRole("button", { name: "List topics" }).click();
    const topic = page.locator(`#topic-list li[data-topic="user:${U}"]`);
    await topic.locator(".count", { hasText: /^1 subscriber$/ }).waitFor();
    // Only the prefix: the topics of other families stay out.
    assert.equal(await page.locator("#topic-list li").count(), 1);
    await page.getByRole("button", { name: `Presence of user:${U}`, exact: true }).click();
    await page.locator("#presence-title", { hasText: `Presence on user:${U}` }).waitFor();
    await page.locator(`#presence-list li[data-key="${p.chat.device}"]`).waitFor();
    await screenshot(page, "dashboard-04-presence");
  });

  test("the broadcast form checks the payload, shows the server's refusal, and reaches the chat page", async () => {
    const { page } = p.admin;
    const chat = p.chat.page;
    await page.getByLabel("Topic", { exact: true }).fill(`user:${U}`);
    await page.getByLabel("Event", { exact: true }).fill("notice");

    // Not JSON: refused on the page, nothing sent.
    await page.getByLabel("Payload (JSON)").fill('{"text": oops}');
    await page.getByRole("button", { name: "Send broadcast" }).click();
    await page.locator("#broadcast-error", { hasText: "The payload is not valid JSON" }).waitFor();
    assert.equal(await page.locator("#broadcast-payload").getAttribute("aria-invalid"), "true");
    await page.locator("#broadcast-payload:focus").waitFor();
    await screenshot(page, "dashboard-05-bad-payload");

    // A reserved event: the server's reason, word for word.
    await page.getByLabel("Payload (JSON)").fill('{"text": "never shown"}');
    await page.getByLabel("Event", { exact: true }).fill("phx_join");
    await page.getByRole("button", { name: "Send broadcast" }).click();
    await page.locator("#broadcast-error", { hasText: "phx_join is reserved (400 invalid_event)" }).waitFor();

    const text = `Maintenance at noon ${stamp}`;
    await page.getByLabel("Event", { exact: true }).fill("notice");
    await page.getByLabel("Payload (JSON)").fill(JSON.stringify({ text }));
    await page.getByRole("button", { name: "Send broadcast" }).click();
    await page.locator("#broadcast-status", { hasText: `Sent notice to user:${U}: 1 subscriber on this node.` }).waitFor();
    assert.equal(await page.locator("#broadcast-error").textContent(), "");
    await chat.locator("#notices li", { hasText: text }).waitFor();
    assert.equal(await chat.locator("#notices li", { hasText: "never shown" }).count(), 0);
    await screenshot(page, "dashboard-06-broadcast-sent");
    await screenshot(chat, "dashboard-06-chat-notice");
  });

  test("disconnecting the device closes the chat page's socket, which reconnects", async () => {
    const { page } = p.admin;
    const chat = p.chat.page;
    const opened = p.chat.sockets.length;
    const current = p.chat.sockets[opened - 1];
    assert.equal(current.isClosed(), false);
    const closed = current.waitForEvent("close", { timeout: WAIT_MS });

    await page.getByRole("button", { name: `Disconnect device ${p.chat.device} of ${U}`, exact: true }).click();
    await page.locator("#users-status", { hasText: `Disconnected device ${p.chat.device} of ${U}` }).waitFor();
    await closed;
    const deadline = Date.now() + WAIT_MS;
    while (p.chat.sockets.length === opened && Date.now() < deadline) await sleep(50);
    assert.ok(p.chat.sockets.length > opened, "the chat page opened a new socket");
    await online(chat, U);

    // The dashboard reads the devices again by itself and sees the device back.
    await page.locator(`#device-list li[data-device="${p.chat.device}"][data-online="true"]`).waitFor();
    // The rows were redrawn under the button that was used; the focus stayed on it.
    assert.equal(await page.evaluate(() => document.activeElement.getAttribute("aria-label")), `Disconnect device ${p.chat.device} of ${U}`);
    // Still the same inbox: a broadcast after the reconnect arrives too.
    const text = `Back again ${stamp}`;
    await page.getByLabel("Payload (JSON)").fill(JSON.stringify({ text }));
    await page.getByRole("button", { name: "Send broadcast" }).click();
    await chat.locator("#notices li", { hasText: text }).waitFor();
    await screenshot(chat, "dashboard-07-chat-reconnected");
  });

  test("a stored token the server refuses is forgotten and asked for again", async () => {
    const stale = await person(browser, server);
    people.push(stale);
    await stale.context.addInitScript((key) => {
      if (!sessionStorage.getItem("seeded")) {
        sessionStorage.setItem("seeded", "1");
        localStorage.setItem(key, "a-token-the-server-changed");
      }
    }, TOKEN_KEY);
    const page = await stale.open("/admin/");
    await page.locator("#login-error", { hasText: "The server refused the token: bad or missing admin token" }).waitFor();
    await page.locator("#login").waitFor();
    assert.equal(await page.locator("#dashboard").isVisible(), false);
    assert.deepEqual(await storedTokens(page), [null, null]);
    await screenshot(page, "dashboard-08-stored-token-refused");
  });

  test("forget token: the page asks again and keeps nothing", async () => {
    const { page } = p.admin;
    await page.getByRole("button", { name: "Forget token" }).click();
    await page.locator("#login").waitFor();
    await page.locator("#token:focus").waitFor();
    assert.deepEqual(await storedTokens(page), [null, null]);
    await page.reload();
    await page.locator("#login").waitFor();
    assert.equal(await page.locator("#dashboard").isVisible(), false);
  });

  test("at phone width, with the keyboard: the token, a lookup and a disconnect", async () => {
    const phone = await person(browser, server, { viewport: { width: 375, height: 720 } });
    people.push(phone);
    const page = await phone.open("/admin/");
    const keyboard = page.keyboard;
    await page.locator("#token:focus").waitFor();
    await keyboard.type(TOKEN);
    await keyboard.press("Tab");
    // Remembered: this one goes to localStorage.
    await keyboard.press("Space");
    await keyboard.press("Enter");
    await page.locator("#dashboard").waitFor();
    assert.deepEqual(await storedTokens(page), [null, TOKEN]);
    await page.waitForFunction(() => Number(document.getElementById("stat-sockets").textContent) >= 1);

    await page.getByLabel("Username prefix").focus();
    await keyboard.type(U);
    await keyboard.press("Enter");
    const devices = page.getByRole("button", { name: `Devices of ${U}`, exact: true });
    await devices.waitFor();
    await devices.focus();
    await keyboard.press("Enter");
    // The heading takes the focus, so a screen reader lands on what just opened.
    await page.locator("#devices-title:focus", { hasText: `Devices of ${U}` }).waitFor();
    await page.locator(`#device-list li[data-device="${p.chat.device}"][data-online="true"]`).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px at 375px`);
    await screenshot(page, "dashboard-09-phone");

    // Every socket of the user this time; the chat page comes back as before.
    const opened = p.chat.sockets.length;
    await page.getByRole("button", { name: `Disconnect ${U}`, exact: true }).focus();
    await keyboard.press("Enter");
    await page.locator("#users-status", { hasText: `Disconnected every socket of ${U}` }).waitFor();
    const deadline = Date.now() + WAIT_MS;
    while (p.chat.sockets.length === opened && Date.now() < deadline) await sleep(50);
    assert.ok(p.chat.sockets.length > opened, "the chat page opened a new socket");
    await online(p.chat.page, U);
  });

  test("revoking the sessions signs the chat page out", async () => {
    const phone = people[people.length - 1];
    const page = phone.context.pages()[0];
    page.once("dialog", (dialog) => dialog.accept());
    await page.getByRole("button", { name: `Revoke sessions of ${U}`, exact: true }).click();
    await page.locator("#users-status", { hasText: `Revoked 1 session of ${U}.` }).waitFor();
    await p.chat.page.locator("#auth").waitFor();
    await screenshot(p.chat.page, "dashboard-10-chat-revoked");
  });

  test("nothing left 127.0.0.1 and no page had a script error", () => {
    for (const { foreign, errors } of people) {
      assert.deepEqual(foreign, []);
      assert.deepEqual(errors, []);
    }
  });
});
