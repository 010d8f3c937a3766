// Ten live shapes on one page in Debian's headless Chromium (playwright-core), for
// tests/browser/test_h2_front.py. The page (h2_front_page.html, on its own origin) starts
// shapes 0-5, waits until each is up to date with its live long-poll sent, then starts
// shapes 6-9; waits for their rows (HOLD_WAIT_MS at most), asks its server to INSERT one row
// every shape matches, and waits until every shape has it. Prints one JSON line.
//
// Env: PAGE_URL (the page, with ?shapes=<shape URL>: the one given to ShapeStream), CHROMIUM (path), SPKI (base64 SHA-256
//      of the front's certificate's public key: Chromium accepts that certificate only),
//      HOLD_WAIT_MS (how long to wait for shapes 6-9 while 0-5 hold their long-polls)
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = process.env;
const holdWait = Number(env.HOLD_WAIT_MS || 30000);
const profile = mkdtempSync(join(tmpdir(), "shapegate-chromium-"));
const args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage"];
if (env.SPKI) args.push(`--ignore-certificate-errors-spki-list=${env.SPKI}`);
// a fresh profile directory (--user-data-dir) per run: the SPKI flag needs one
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args,
});
const out = { console: [] };
try {
  const page = await browser.newPage();
  page.on("console", (m) => m.type() === "error" && out.console.push(m.text()));
  page.on("pageerror", (e) => out.console.push(`page error: ${e.message}`));
  // The protocol of every answer to the shape URL, as DevTools' Protocol column shows it
  // (the page's own nextHopProtocol is "" for another origin's resources without a
  // Timing-Allow-Origin header).
  const shapesUrl = new URL(env.PAGE_URL).searchParams.get("shapes");
  out.cdpProtocols = [];
  const cdp = await browser.newCDPSession(page);
  cdp.on("Network.responseReceived", (e) => {
    if (e.response.url.startsWith(shapesUrl)) out.cdpProtocols.push(e.response.protocol);
  });
  await cdp.send("Network.enable");
  await page.goto(env.PAGE_URL);
  await page.waitForFunction(() => window.ready === true);

  await page.evaluate(() => window.startShapes(0, 6));
  await page.waitForFunction(
    () => state.shapes.filter((s) => s.rowsAt !== null).length === 6 && state.liveSent >= 6,
    null, { timeout: 60000, polling: 50 });
  out.liveDoneBeforeMore = await page.evaluate(() => state.liveDone);

  await page.evaluate(() => window.startShapes(6, 10));
  try {
    await page.waitForFunction(
      () => state.shapes.filter((s) => s.rowsAt !== null).length === 10,
      null, { timeout: holdWait, polling: 50 });
  } catch {
    // (over HTTP/1.1 shapes 6-9 wait for a connection: what they saw is in `held`)
  }
  out.held = await page.evaluate(() => JSON.parse(JSON.stringify(state)));

  // One INSERT every shape matches (id 1000 > 9): it ends the held long-polls, too.
  const inserted = await page.evaluate(async () => (await fetch("/insert", { method: "POST" })).status);
  out.inserted = inserted;
  await page.waitForFunction(
    () => state.shapes.length === 10 && state.shapes.every((s) => s.insertSeen),
    null, { timeout: 90000, polling: 50 }).catch(() => {});
  out.final = await page.evaluate(() => JSON.parse(JSON.stringify(state)));
  out.protocols = await page.evaluate(() => window.protocols());
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
