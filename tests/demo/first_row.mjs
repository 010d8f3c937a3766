// Open the demo page for one user in Debian's headless Chromium and print, as JSON, when the
// first todo row was on screen with the sync status "live" (ms since the epoch).
// Env: DEMO_URL, CHROMIUM (path), DEMO_USER (default alice). Used by scripts/measure-first-row.
import { chromium } from "playwright-core";

const env = process.env;
const browser = await chromium.launch({
  executablePath: env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const opened = Date.now();
  await page.goto(`${env.DEMO_URL}/?user=${env.DEMO_USER || "alice"}`);
  await page.waitForSelector("[data-testid=status][data-state=live]", { timeout: 60000 });
  await page.waitForSelector("li[data-testid=todo]", { timeout: 60000 });
  const title = await page.getAttribute("li[data-testid=todo]", "data-title");
  console.log(JSON.stringify({ opened, firstRowAt: Date.now(), title }));
} finally {
  await browser.close();
}
