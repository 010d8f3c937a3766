// The dashboard shows that the source registry is open read-only (the engine started on a
// full disk): a banner on every page, a refused change explained, the banner gone once the
// registry can be written again. Headless Chromium driven by playwright-core.
// Env: ADMIN_URL, ADMIN_TOKEN, SOURCE_ID, CHROMIUM, PLAYWRIGHT. Prints "READ-ONLY SEEN" once
// the read-only state was checked, then waits (the test makes the registry writable) and
// prints one JSON line with what the page showed.
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = process.env;
const { chromium } = createRequire(env.PLAYWRIGHT)("playwright-core");
const profile = mkdtempSync(join(tmpdir(), "shapegate-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: env.CHROMIUM, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const out = { errors: [], alerts: [] };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => out.errors.push(e.message));
  page.on("dialog", async (d) => { out.alerts.push(d.message()); await d.dismiss(); });
  await page.goto(env.ADMIN_URL + "/");
  await page.fill("#login-token", env.ADMIN_TOKEN);
  await page.click("#login-submit");
  await page.waitForSelector(`tr[data-source-id='${env.SOURCE_ID}']`);
  out.listBanner = await page.textContent("#registry-banner:not([hidden])");
  await page.click(`tr[data-source-id='${env.SOURCE_ID}'] a.source-link`);
  await page.waitForSelector("#source-name");
  out.sourcePageBanner = await page.isVisible("#registry-banner");
  await page.click("#pause-button");
  await page.waitForTimeout(300); // the refusal's alert
  console.log("READ-ONLY SEEN");
  await page.waitForSelector("#registry-banner", { state: "hidden", timeout: 30000 });
  out.bannerGone = true;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
