// Drive the admin dashboard in Debian's headless Chromium (playwright-core, no downloaded
// browsers): sign in, create a source with the form, wait for `active`, read the source id
// and the secret shown once, save screenshots. Prints a JSON line with what it read.
//
// Env: ADMIN_URL, ADMIN_TOKEN, DATABASE_URL, SOURCE_NAME, ARTIFACTS (dir), CHROMIUM (path)
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = process.env;
const profile = mkdtempSync(join(tmpdir(), "shapegate-chromium-"));
// a fresh profile directory (--user-data-dir) per run
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage"],
});
const failures = [];
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // the 401 and 400 this script provokes on purpose show up as "Failed to load resource"
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) {
      failures.push(`console: ${m.text()}`);
    }
  });
  page.on("request", (r) => {
    if (!r.url().startsWith(env.ADMIN_URL) && !r.url().startsWith("data:")) {
      failures.push(`request outside the admin listener: ${r.url()}`);
    }
  });

  await page.goto(env.ADMIN_URL + "/");
  await page.fill("#login-token", "not-the-token-at-all");
  await page.click("#login-submit");
  await page.waitForSelector("#login-error:not([hidden])");
  await page.fill("#login-token", env.ADMIN_TOKEN);
  await page.click("#login-submit");

  await page.click("#new-source-button");
  await page.fill("#new-name", env.SOURCE_NAME);
  await page.fill("#new-url", "this is not a connection string");
  await page.click("#new-submit");
  const formError = await page.textContent("#new-error:not([hidden])");
  await page.fill("#new-url", env.DATABASE_URL);
  await page.click("#new-submit");

  await page.waitForSelector("#source-state[data-state='active']", { timeout: 60000 });
  const sourceId = (await page.textContent("#source-id")).trim();
  const secret = (await page.textContent("#new-secret")).trim();
  const curl = await page.textContent("#curl-line");
  const proxy = await page.textContent("#proxy-snippet");
  await page.screenshot({ path: join(env.ARTIFACTS, "dashboard-source.png"), fullPage: true });

  // rotate the secret with the default grace period (1 hour): a new one is shown once
  await page.click("#rotate-button");
  await page.waitForSelector("#secret-notice:has-text('New secret issued')");
  const rotatedSecret = (await page.textContent("#new-secret")).trim();
  const oldValidUntil = await page.textContent("dl.details");

  await page.click("text=← All sources");
  await page.waitForSelector(`tr[data-source-id='${sourceId}'] .badge[data-state='active']`);
  const listed = await page.textContent(`tr[data-source-id='${sourceId}']`);
  await page.screenshot({ path: join(env.ARTIFACTS, "dashboard.png"), fullPage: true });

  console.log(JSON.stringify({ sourceId, secret, rotatedSecret, oldValidUntil, curl, proxy,
    listed, formError, failures }));
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
