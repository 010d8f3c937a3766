// A page on its own origin syncs one shape through the proxy with ShapeStream's `headers`
// option adding request headers of the page's own (X-Tenant, Sentry's sentry-trace and
// baggage) beside its token, in Debian's headless Chromium (playwright-core), for
// tests/browser/test_cors_headers.py. Waits until the shape is up to date (WAIT_MS at most;
// a preflight the proxy does not allow keeps it from ever being) and prints one JSON line:
// the page's state (rows, up to date, fetch failures) and its console errors.
//
// Env: PAGE_URL (the page, with ?shape=<the proxy's shape URL>&token=<a JWT>), CHROMIUM, WAIT_MS
import { chromium } from "playwright-core";

const env = process.env;
const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const out = { console: [] };
try {
  const page = await browser.newPage();
  page.on("console", (m) => m.type() === "error" && out.console.push(m.text()));
  page.on("pageerror", (e) => out.console.push(`page error: ${e.message}`));
  await page.goto(env.PAGE_URL);
  await page.waitForFunction(() => window.state && window.state.upToDate, null,
    { timeout: Number(env.WAIT_MS || 30000), polling: 50 }).catch(() => {});
  out.state = await page.evaluate(() => JSON.parse(JSON.stringify(window.state)));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
