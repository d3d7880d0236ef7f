// The chat page at / in headless Chromium against the real server: two people (two browser
// contexts, so two profiles with their own localStorage) sign up, invite, chat, and watch each
// other's presence, typing and ticks; reloads, a second tab, an offline spell, paging back
// through history, a server restart and signing out. The tests run in order and share the
// people, as a person's afternoon would. Screenshots go to target/screenshots/.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { startServer } from "../js/support/server.js";
import {
  STATIC_DIR,
  compose,
  contact,
  launch,
  message,
  messages,
  online,
  person,
  presenceOf,
  screenshot,
  send,
  signIn,
  signUp,
  sleep,
  stopAll,
  ticksNow,
  ticksSay,
} from "./support/browser.js";

// Cheap password hashing: a debug build's default argon2 takes seconds per signup.
const CONFIG = `static_dir = ${JSON.stringify(STATIC_DIR)}\n\n[accounts]\nargon2_memory_kib = 64\nargon2_iterations = 1\n`;
// Long enough for a receipt that should not come to arrive on loopback.
const QUIET_MS = 600;
// More than one history page (30), so the conversation has to page back.
const MANY = 32;

const stamp = Math.random().toString(36).slice(2, 7);
const A = `alice${stamp}`;
const B = `bob${stamp}`;
const C = `carol${stamp}`;

let server;
let browser;
const people = [];
const p = {};

before(async () => {
  server = await startServer({ config: CONFIG });
  browser = await launch();
  p.alice = await person(browser, server);
  p.bob = await person(browser, server);
  people.push(p.alice, p.bob);
});

after(() => stopAll(browser, server));

describe("the chat page", () => {
  test("two people sign up; one invites the other, who accepts", async () => {
    p.alice.tab = await p.alice.open();
    p.bob.tab = await p.bob.open();
    const { tab: alice } = p.alice;
    const { tab: bob } = p.bob;
    await screenshot(alice, "01-sign-in");
    await signUp(alice, A);
    await signUp(bob, B);

    await alice.getByLabel("Invite someone by username").fill(B);
    await alice.getByRole("button", { name: "Invite", exact: true }).click();
    await alice.locator("#invite-status", { hasText: `Invite sent to ${B}.` }).waitFor();
    await alice.locator(`#sent-invites li[data-to="${B}"]`).waitFor();

    // Live: bob's page learns of the invite from the inbox, without a reload.
    const accept = bob.getByRole("button", { name: `Accept invite from ${A}` });
    await accept.waitFor();
    await screenshot(bob, "02-invite-waiting");
    await accept.click();
    await contact(bob, A).waitFor();
    await contact(alice, B).waitFor();
    await alice.locator(`#sent-invites li[data-to="${B}"]`).waitFor({ state: "detached" });
    await bob.locator("#invites li").waitFor({ state: "detached" });
  });

  test("each sees the other online", async () => {
    await presenceOf(p.alice.tab, B).filter({ hasText: /^online$/ }).waitFor();
    await presenceOf(p.bob.tab, A).filter({ hasText: /^online$/ }).waitFor();
  });

  test("typing shows on the other side; a message goes ✓ sent, ✓✓ delivered, then read once opened", async () => {
    const { tab: alice } = p.alice;
    const { tab: bob } = p.bob;
    await contact(alice, B).click();
    await alice.locator("#peer-name", { hasText: B }).waitFor();
    await alice.locator("#peer-presence", { hasText: "online" }).waitFor();

    // bob has no conversation open: typing shows in his contact list.
    await compose(alice).fill("hel");
    await presenceOf(bob, A).filter({ hasText: "typing…" }).waitFor();
    await screenshot(bob, "03-typing-in-list");

    await compose(alice).fill("hello bob");
    await compose(alice).press("Enter");
    await message(alice, "hello bob").waitFor();
    // bob's page has it but has not shown it: delivered, not read, however long we wait.
    await ticksSay(alice, "hello bob", "delivered");
    await contact(bob, A).locator(".unread", { hasText: "1" }).waitFor();
    await presenceOf(bob, A).filter({ hasText: /^online$/ }).waitFor();
    await bob.locator("#announcer", { hasText: `${A}: hello bob` }).waitFor();
    await sleep(QUIET_MS);
    assert.equal(await ticksNow(alice, "hello bob"), "delivered");
    await screenshot(alice, "04-delivered");

    await contact(bob, A).click();
    await message(bob, "hello bob").waitFor();
    await ticksSay(alice, "hello bob", "read");
    await contact(bob, A).locator(".unread").waitFor({ state: "detached" });

    // The other way round, with alice looking at the conversation.
    await compose(bob).fill("hi alice");
    await alice.locator("#typing", { hasText: `${B} is typing…` }).waitFor();
    await screenshot(alice, "05-typing-in-conversation");
    await compose(bob).press("Enter");
    await message(alice, "hi alice").waitFor();
    await alice.locator("#typing", { hasText: /^$/ }).waitFor();
    await ticksSay(bob, "hi alice", "read");
    await screenshot(alice, "06-conversation-alice");
    await screenshot(bob, "06-conversation-bob");
  });

  test("a second tab of the same person sees the same messages and ticks, live", async () => {
    const { tab: alice } = p.alice;
    const { tab: bob } = p.bob;
    // Same profile: the session and the open conversation come from localStorage.
    const second = await p.alice.open();
    p.alice.second = second;
    await online(second, A);
    await second.locator("#peer-name", { hasText: B }).waitFor();
    await message(second, "hello bob").waitFor();
    await message(second, "hi alice").waitFor();
    await ticksSay(second, "hello bob", "read");

    // bob looks away; what the second tab sends shows on the first tab too, and both follow
    // the ticks from delivered to read.
    await bob.getByRole("button", { name: "Back to contacts" }).click();
    await bob.locator("#conversation").waitFor({ state: "hidden" });
    await send(second, "from the second tab");
    await message(alice, "from the second tab").waitFor();
    for (const tab of [alice, second]) await ticksSay(tab, "from the second tab", "delivered");
    await screenshot(second, "07-second-tab-delivered");
    await contact(bob, A).click();
    for (const tab of [alice, second]) await ticksSay(tab, "from the second tab", "read");

    await send(bob, "to both tabs");
    for (const tab of [alice, second]) await message(tab, "to both tabs").waitFor();
    await ticksSay(bob, "to both tabs", "read");
    await screenshot(second, "08-second-tab-read");
  });

  test("a reload keeps the session, the open conversation and its history with its ticks", async () => {
    const { tab: bob } = p.bob;
    await bob.reload();
    await online(bob, B);
    assert.equal(await bob.locator("#auth").isVisible(), false);
    await bob.locator("#peer-name", { hasText: A }).waitFor();
    await message(bob, "to both tabs").waitFor();
    assert.deepEqual(await messages(bob).locator(".text").allTextContents(), ["hello bob", "hi alice", "from the second tab", "to both tabs"]);
    await ticksSay(bob, "hi alice", "read");
    await ticksSay(bob, "to both tabs", "read");
    await screenshot(bob, "09-after-reload");
  });

  test("offline: last seen, a message only ✓ sent until they are back, then read", async () => {
    const { tab: alice, second } = p.alice;
    await p.bob.tab.close();
    await alice.locator("#peer-presence", { hasText: "last seen" }).waitFor();
    await presenceOf(second, B).filter({ hasText: "last seen" }).waitFor();

    await send(alice, "are you there?");
    await ticksSay(alice, "are you there?", "sent");
    await sleep(QUIET_MS);
    assert.equal(await ticksNow(alice, "are you there?"), "sent");
    await screenshot(alice, "10-offline-sent");

    p.bob.tab = await p.bob.open();
    const { tab: bob } = p.bob;
    await online(bob, B);
    await message(bob, "are you there?").waitFor();
    for (const tab of [alice, second]) await ticksSay(tab, "are you there?", "read");
    await alice.locator("#peer-presence", { hasText: /^online$/ }).waitFor();
  });

  test("history pages back to the first message", async () => {
    const { tab: alice } = p.alice;
    const { tab: bob } = p.bob;
    for (let i = 1; i <= MANY; i += 1) await send(alice, `number ${i}`);
    await message(bob, `number ${MANY}`).waitFor();
    await ticksSay(alice, `number ${MANY}`, "read");

    await bob.reload();
    await online(bob, B);
    await message(bob, `number ${MANY}`).waitFor();
    const older = bob.getByRole("button", { name: "Load older messages" });
    await older.waitFor();
    const total = 5 + MANY;
    assert.equal(await messages(bob).count(), 30);
    await older.click();
    await message(bob, "hello bob").waitFor();
    assert.equal(await messages(bob).count(), total);
    await older.waitFor({ state: "hidden" });
    const texts = await messages(bob).locator(".text").allTextContents();
    assert.deepEqual(texts.slice(0, 5), ["hello bob", "hi alice", "from the second tab", "to both tabs", "are you there?"]);
    assert.deepEqual(texts.slice(5), Array.from({ length: MANY }, (_, i) => `number ${i + 1}`));
    await screenshot(bob, "11-history-paged-back");
  });

  test("after a server restart the pages reconnect, rejoin and carry on without duplicates", async () => {
    const { tab: alice, second } = p.alice;
    const { tab: bob } = p.bob;
    const before = await messages(bob).count();
    const { port } = server;
    await server.stop();
    await bob.locator('#connection[data-state="connecting"]').waitFor();
    server = await startServer({ port, config: CONFIG });
    for (const tab of [alice, second, bob]) await tab.locator('#connection[data-state="open"]').waitFor({ timeout: 15_000 });

    await send(alice, "after the restart");
    await message(bob, "after the restart").waitFor();
    for (const tab of [alice, second]) await ticksSay(tab, "after the restart", "read");
    await presenceOf(alice, B).filter({ hasText: /^online$/ }).waitFor();
    await sleep(QUIET_MS);
    assert.equal(await messages(bob).count(), before + 1);
    assert.equal(await message(bob, `number ${MANY}`).count(), 1);
  });

  test("signing out in one tab signs out the other; signing in again brings everything back", async () => {
    const { tab: alice, second } = p.alice;
    await second.getByRole("button", { name: "Sign out" }).click();
    for (const tab of [second, alice]) await tab.locator("#auth").waitFor();
    assert.equal(await alice.evaluate(() => localStorage.getItem("courier.session")), null);
    await screenshot(alice, "12-signed-out");

    await signIn(alice, A);
    await contact(alice, B).waitFor();
    await alice.locator("#peer-name", { hasText: B }).waitFor();
    await message(alice, "after the restart").waitFor();
    await second.reload();
    await online(second, A);
    await second.close();
  });

  test("at phone width, with the keyboard only: sign up, accept, open a conversation, go back", async () => {
    const carol = await person(browser, server, { viewport: { width: 375, height: 720 } });
    people.push(carol);
    const phone = await carol.open();
    const keyboard = phone.keyboard;
    // The username field has the focus when the page opens.
    await phone.locator("#auth-username:focus").waitFor();
    await keyboard.type(C);
    await keyboard.press("Tab");
    await keyboard.type("browser-test-password");
    await keyboard.press("Tab");
    await keyboard.press("Tab");
    assert.equal(await phone.evaluate(() => document.activeElement.textContent), "Create account");
    await keyboard.press("Enter");
    await online(phone, C);

    // bob invites carol; she accepts with the keyboard.
    const { tab: bob } = p.bob;
    await bob.getByLabel("Invite someone by username").fill(C);
    await bob.getByLabel("Invite someone by username").press("Enter");
    await bob.locator("#invite-status", { hasText: `Invite sent to ${C}.` }).waitFor();
    const accept = phone.getByRole("button", { name: `Accept invite from ${B}` });
    await accept.waitFor();
    await accept.focus();
    await keyboard.press("Enter");
    await contact(phone, B).waitFor();
    await screenshot(phone, "13-phone-contacts");

    await contact(phone, B).focus();
    await keyboard.press("Enter");
    await phone.locator("#peer-name", { hasText: B }).waitFor();
    assert.equal(await phone.locator("#sidebar").isVisible(), false, "one pane at a time at phone width");
    await phone.locator("#compose:focus").waitFor();
    await keyboard.type("hi from a phone");
    await keyboard.press("Enter");
    // bob is in alice's conversation, so carol's message waits in his list, unread.
    await contact(bob, C).locator(".unread", { hasText: "1" }).waitFor();
    await ticksSay(phone, "hi from a phone", "delivered");
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px at 375px`);
    await screenshot(phone, "14-phone-conversation");

    await keyboard.press("Escape");
    await phone.locator("#sidebar").waitFor();
    await phone.locator(`#contacts button[data-peer="${B}"]:focus`).waitFor();

    // bob reading alice's conversation does not make carol's message read (the server's read
    // mark covers a whole log, so the page stops it below carol's unread message) ...
    await send(p.alice.tab, "while carol waits");
    await message(bob, "while carol waits").waitFor();
    await sleep(QUIET_MS);
    await contact(phone, B).click();
    await ticksSay(phone, "hi from a phone", "delivered");
    await sleep(QUIET_MS);
    assert.equal(await ticksNow(phone, "hi from a phone"), "delivered");
    // The price: alice's newer message, on bob's screen, cannot be marked read yet either.
    assert.equal(await ticksNow(p.alice.tab, "while carol waits"), "delivered");
    // ... until he opens hers, which reads both.
    await contact(bob, C).click();
    await message(bob, "hi from a phone").waitFor();
    await ticksSay(phone, "hi from a phone", "read");
    await ticksSay(p.alice.tab, "while carol waits", "read");
  });

  test("a stored session the server refuses leads back to the sign-in form", async () => {
    const stale = await person(browser, server);
    people.push(stale);
    // A token that was never issued: the handshake is refused with 403, which a page cannot
    // see; the page asks GET /api/session, hears 401, and goes back to the sign-in form.
    await stale.context.addInitScript(() => {
      if (!sessionStorage.getItem("seeded")) {
        sessionStorage.setItem("seeded", "1");
        localStorage.setItem("courier.session", JSON.stringify({ token: "not-a-session-token", username: "ghost" }));
      }
    });
    const page = await stale.open();
    await page.locator("#auth").waitFor();
    await page.locator("#auth-error", { hasText: "session has ended" }).waitFor();
    await screenshot(page, "15-refused-session");
    assert.equal(await page.evaluate(() => localStorage.getItem("courier.session")), null);
  });

  test("nothing left 127.0.0.1 and no page had a script error", () => {
    for (const { foreign, errors } of people) {
      assert.deepEqual(foreign, []);
      assert.deepEqual(errors, []);
    }
  });
});
