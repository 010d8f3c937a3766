// The dashboard shows a source whose creation's answer was never sent (nobody has its
// secret): a badge in the list, a notice on its page, both gone once a secret is issued.
// Debian's headless Chromium driven by playwright-core (tests/browser's node_modules).
// Env: ADMIN_URL, ADMIN_TOKEN, LOST_ID, KNOWN_ID, CHROMIUM, PLAYWRIGHT (package.json to
// resolve playwright-core from). Prints one JSON line with what the page showed.
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
const out = { errors: [] };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => out.errors.push(e.message));
  await page.goto(env.ADMIN_URL + "/");
  await page.fill("#login-token", env.ADMIN_TOKEN);
  await page.click("#login-submit");
  const lost = `tr[data-source-id='${env.LOST_ID}']`;
  const known = `tr[data-source-id='${env.KNOWN_ID}']`;
  await page.waitForSelector(`${lost} .badge.pending`);
  await page.waitForSelector(known);
  out.lostRow = await page.textContent(lost);
  out.knownRow = await page.textContent(known);
  out.badgeTitle = await page.getAttribute(`${lost} .badge.pending`, "title");

  await page.click(`${lost} a.source-link`);
  out.notice = await page.textContent("#pending-notice:not([hidden])");
  await page.selectOption("#grace", "0");
  await page.click("#rotate-button");
  await page.waitForSelector("#secret-notice:has-text('New secret issued')");
  out.noticeAfterRotate = await page.isVisible("#pending-notice");
  await page.click("text=← All sources");
  await page.waitForSelector(`${lost} .badge`);
  out.lostRowAfter = await page.textContent(lost);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
