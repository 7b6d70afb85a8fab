// Loads one template into a running ComfyUI in Chromium and records what a user sees.
//
//   node workflows/screenshot.cjs URL MODULE NAME OUT [--run] [--warn] [--viewport W,H] [--view SCALE,X,Y]
//
// Writes OUT/NAME[_run][_warn].png (the screen) and .json: every node's box in graph units as the
// frontend laid it out (after previews appeared), grown to cover the DOM previews (video players)
// that start inside it, because those are drawn over whatever lies below and do not always resize
// the node. --run queues the workflow and waits for it; --warn first cuts Encode Source's audio and
// gives Encode Instruction words the demo model does not know (to see warnings on the nodes).
// Needs playwright-core (npm; put its node_modules on NODE_PATH) and Chromium ($CHROMIUM, default
// /usr/bin/chromium). workflows/screenshot_templates.py starts ComfyUI and drives this script.
'use strict';
const fs = require('node:fs');
const { chromium } = require('playwright-core');

function option(args, name, fallback) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1].split(',').map(Number) : fallback;
}

async function main() {
  const [url, module, name, out, ...rest] = process.argv.slice(2);
  const run = rest.includes('--run');
  const warn = rest.includes('--warn');
  const [width, height] = option(rest, '--viewport', [2200, 1100]);
  const view = option(rest, '--view', null);
  const settings = {
    'Comfy.TutorialCompleted': true, // no template browser on first start
    'Comfy.Workflow.ShowMissingModelsWarning': false,
    'Comfy.Minimap.Visible': false,
    'LiteGraph.Canvas.MinFontSizeForLOD': 1, // draw text even when zoomed out
  };
  for (const [key, value] of Object.entries(settings)) {
    await fetch(`${url}/api/settings/${key}`, { method: 'POST', body: JSON.stringify(value),
                                                headers: { 'Content-Type': 'application/json' } });
  }
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
                                          args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width, height } });
    await page.goto(url, { waitUntil: 'networkidle' });
    await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 120000 });
    const workflow = await (await fetch(`${url}/api/workflow_templates/${module}/${name}.json`)).json();
    await page.evaluate(async (wf) => { await window.app.loadGraphData(wf); }, workflow);
    await page.waitForTimeout(6000); // Load Video fetches and lays out its preview
    if (warn) {
      await page.evaluate(() => {
        const nodes = window.app.graph._nodes;
        const source = nodes.find((n) => n.type === 'InstructAV2AVSourceEncode');
        source.disconnectInput(source.findInputSlot('audio'));
        const encode = nodes.find((n) => n.type === 'InstructAV2AVInstructionEncode');
        encode.disconnectInput(encode.findInputSlot('instruction'));
        encode.widgets.find((w) => w.name === 'instruction').value = 'remove the purple zebra';
      });
    }
    if (run) {
      // a fresh run, so every node executes (and shows its warnings) instead of answering from the cache
      await fetch(`${url}/free`, { method: 'POST', body: JSON.stringify({ free_memory: true }),
                                    headers: { 'Content-Type': 'application/json' } });
      await page.evaluate(async () => { await window.app.queuePrompt(0); });
      await page.waitForTimeout(2000);
      for (let i = 0; i < 600; i++) {
        const queue = await (await fetch(`${url}/queue`)).json();
        if (!queue.queue_running.length && !queue.queue_pending.length) break;
        await page.waitForTimeout(1000);
      }
      await page.waitForTimeout(5000); // previews and the saved video's player
    }
    if (view) {
      await page.evaluate(([scale, x, y]) => {
        const canvas = window.app.canvas;
        canvas.ds.scale = scale;
        canvas.ds.offset = [x, y];
        canvas.setDirty(true, true);
      }, view);
      await page.waitForTimeout(1500);
    }
    const boxes = await page.evaluate(() => {
      const canvas = window.app.canvas;
      const rect = canvas.canvas.getBoundingClientRect();
      const toGraph = (px, py) => [(px - rect.left) / canvas.ds.scale - canvas.ds.offset[0],
                                   (py - rect.top) / canvas.ds.scale - canvas.ds.offset[1]];
      const nodes = window.app.graph._nodes.map((n) => {
        const [x, y, w, h] = n.getBounding();
        return { id: n.id, type: n.type, title: n.title, box: [x, y, x + w, y + h] };
      });
      for (const media of document.querySelectorAll('video, img')) {
        const r = media.getBoundingClientRect();
        if (!r.width || !r.height || r.left < rect.left || r.top < rect.top) continue;
        const [x0, y0] = toGraph(r.left, r.top);
        const [x1, y1] = toGraph(r.right, r.bottom);
        const owner = nodes.find((n) => n.box[0] <= x0 && x0 <= n.box[2] && n.box[1] <= y0 && y0 <= n.box[3]);
        if (owner) owner.box = [owner.box[0], owner.box[1], Math.max(owner.box[2], x1), Math.max(owner.box[3], y1)];
      }
      return nodes;
    });
    const stem = `${out}/${name}${run ? '_run' : ''}${warn ? '_warn' : ''}`;
    fs.writeFileSync(`${stem}.json`, JSON.stringify(boxes, null, 1));
    await page.screenshot({ path: `${stem}.png` });
    console.log(stem);
  } finally {
    await browser.close();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
