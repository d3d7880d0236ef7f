// One courier server per test file, stopped together with every client when the file is done.
import { after, before } from "node:test";

import { disconnectAll } from "./client.js";
import { startServer } from "./server.js";

/**
 * Registers this file's hooks; the returned holder's `server` is live while its tests run.
 * `options` go to startServer (e.g. `{config}`, a TOML string).
 */
export function serverPerFile(options = {}) {
  const holder = { server: undefined };
  before(async () => {
    holder.server = await startServer(options);
  });
  after(async () => {
    await disconnectAll();
    await holder.server?.stop();
  });
  return holder;
}
