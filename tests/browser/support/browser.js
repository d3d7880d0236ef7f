// Headless Debian Chromium driven by playwright-core, and the chat page's own vocabulary (sign
// up, open a conversation, read the ticks) so that the tests read as what a person does.
import { accessSync, mkdirSync, constants as fsConstants } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const STATIC_DIR = path.join(REPO, "priv/static");
export const SCREENSHOTS = path.join(REPO, "target/screenshots");
// Every wait is bounded by this; loopback answers in milliseconds, so a miss is a failure.
export const WAIT_MS = 8_000;
export const PASSWORD = "browser-test-password";

// The system's Chromium, never a downloaded one (playwright-core downloads nothing by itself).
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"];

export async function launch() {
  try {
    accessSync(CHROMIUM, fsConstants.X_OK);
  } catch {
    throw new Error(`no Chromium at ${CHROMIUM}: install Debian's (apt-get install -y chromium) or point CHROMIUM at one`);
  }
  mkdirSync(SCREENSHOTS, { recursive: true });
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: 30_000 });
}

/**
 * A browser context of its own (a person's browser profile: its own localStorage) whose
 * requests may go to 127.0.0.1 only; anything else is aborted and listed in `foreign`.
 */
export async function person(browser, server, { viewport = { width: 1100, height: 760 } } = {}) {
  const context = await browser.newContext({ baseURL: `http://${server.addr}`, viewport });
  context.setDefaultTimeout(WAIT_MS);
  context.setDefaultNavigationTimeout(WAIT_MS);
  const foreign = [];
  await context.route("**/*", (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === "127.0.0.1") return route.continue();
    foreign.push(url.href);
    return route.abort();
  });
  const errors = [];
  const open = async (where = "/") => {
    const page = await context.newPage();
    page.on("pageerror", (err) => errors.push(err.message));
    page.on("console", (msg) => {
      // Chromium reports refused connections (the restart test) as console errors; those are
      // the network's, not the page's.
      if (msg.type() === "error" && !/^Failed to load resource|^WebSocket connection to .* failed/.test(msg.text())) errors.push(msg.text());
    });
    await page.goto(where);
    return page;
  };
  return { context, foreign, errors, open };
}

export async function screenshot(page, name) {
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

export async function fillCredentials(page, username, password = PASSWORD) {
  await page.getByLabel("Username", { exact: true }).fill(username);
  await page.getByLabel("Password", { exact: true }).fill(password);
}

/** Signs up (or in) through the form and waits for the socket to be open. */
export async function signUp(page, username) {
  await fillCredentials(page, username);
  await page.getByRole("button", { name: "Create account" }).click();
  await online(page, username);
}

export async function signIn(page, username, password = PASSWORD) {
  await fillCredentials(page, username, password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await online(page, username);
}

export async function online(page, username) {
  await page.locator("#me", { hasText: username }).waitFor();
  await page.locator('#connection[data-state="open"]').waitFor();
}

export const contact = (page, eid) => page.locator(`#contacts button[data-peer="${eid}"]`);
export const presenceOf = (page, eid) => contact(page, eid).locator(".presence");
export const compose = (page) => page.getByRole("textbox", { name: "Message", exact: true });
export const messages = (page) => page.locator("#messages > li");
export const message = (page, text) => page.locator("#messages > li", { has: page.locator(".text", { hasText: new RegExp(`^${escape(text)}$`) }) });
export const ticks = (page, text) => message(page, text).locator(".ticks");

function escape(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

export async function send(page, text) {
  await compose(page).fill(text);
  await compose(page).press("Enter");
  await message(page, text).waitFor();
}

/** Waits until the ticks of the message `text` say `state`. */
export async function ticksSay(page, text, state) {
  await page.locator(`#messages > li .ticks[data-state="${state}"]`).and(ticks(page, text)).waitFor();
}

/** The ticks' state of `text` as it is now, for checks that something did not change. */
export async function ticksNow(page, text) {
  return ticks(page, text).getAttribute("data-state", { timeout: WAIT_MS });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Closes Chromium, then stops the server. Closing Chromium is bounded too: a hung browser must
 * not keep the suite from ending. */
export async function stopAll(browser, server) {
  let timer;
  const bound = new Promise((resolve) => {
    timer = setTimeout(resolve, 10_000);
  });
  await Promise.race([browser?.close(), bound]).catch(() => {});
  clearTimeout(timer);
  await server?.stop();
}
