// patchbay results page: plain JS, no build step. Reads the devtools API (live server)
// or the data a report inlined as window.PATCHBAY_REPORT (file://, no server).
'use strict'

// ---------------------------------------------------------------- data sources

const enc = encodeURIComponent

function liveSource() {
  const get = async (url, as) => {
    try {
      const res = await fetch(url)
      if (!res.ok) return null
      return as === 'json' ? await res.json() : as === 'bytes' ? new Uint8Array(await res.arrayBuffer()) : await res.text()
    } catch { return null }
  }
  const run = (name) => `api/runs/${enc(name)}`
  return {
    live: true,
    runs: async () => (await get('api/runs', 'json')) || [],
    state: (name) => get(`${run(name)}/state`, 'json'),
    file: (name, path) => get(`${run(name)}/files/${enc(path)}`, 'text'),
    logs: async (name) => (await get(`${run(name)}/logs`, 'json')) || [],
    // A window of the log from byte `after` (the server sends at most 1 MiB) and its size.
    async logChunk(name, path, after, limit) {
      try {
        const res = await fetch(`${run(name)}/logs/${enc(path)}?after=${after}` + (limit == null ? '' : `&limit=${limit}`))
        if (!res.ok) return null
        const bytes = new Uint8Array(await res.arrayBuffer())
        return { bytes, size: Number(res.headers.get('X-Log-Size')) || after + bytes.length }
      } catch { return null }
    },
    combined: (inv) => get(`api/invocations/${enc(inv)}/combined-results`, 'json'),
    progress: (inv) => get(`api/invocations/${enc(inv)}/progress`, 'json'),
    groups: async () => (await get('api/groups', 'json')) || [],
    groupSummary: (name) => get(`api/groups/${enc(name)}/summary`, 'json'),
    async compare(baseInv, headInv) {
      const q = new URLSearchParams({ ...(baseInv ? { base: baseInv } : {}), ...(headInv ? { head: headInv } : {}) })
      try { return await (await fetch(`api/compare?${q}`)).json() } catch { return { error: 'the server did not answer' } }
    },
    logUrl: (name, path) => `${run(name)}/logs/${enc(path)}`,
    subscribeRuns(cb) {
      const es = new EventSource('api/runs/subscribe')
      es.onmessage = () => cb()
      return es
    },
    subscribeEvents(name, after, cb) {
      // No `after` yet: every event (a library-made lab numbers them from 0).
      const es = new EventSource(`${run(name)}/events` + (after == null ? '' : `?after=${after}`))
      es.onmessage = (m) => { try { cb(JSON.parse(m.data)) } catch { /* a broken line */ } }
      return es
    },
  }
}

function inlineSource(data) {
  const rd = (name) => data.runData[name] || {}
  const utf8 = new TextEncoder()
  return {
    live: false,
    runs: async () => data.runs,
    state: async (name) => rd(name).state || null,
    file: async (name, path) => (rd(name).files || {})[path] ?? null,
    logs: async (name) => rd(name).logs || [],
    logChunk: async (name, path, after) => {
      const bytes = utf8.encode((rd(name).logText || {})[path] ?? '')
      return after ? { bytes: new Uint8Array(), size: bytes.length } : { bytes, size: bytes.length }
    },
    combined: async (inv) => (data.combined || {})[inv] || null,
    progress: async (inv) => (data.progress || {})[inv] || null,
    groups: async () => data.groups || [],
    groupSummary: async (name) => (data.groupSummary || {})[name] || null,
    // A report holds one comparison, against the baseline it was written with.
    compare: async () => data.compare || { error: 'this report was written without --baseline' },
    logUrl: () => null,
    subscribeRuns() { return null },
    subscribeEvents(name, after, cb) { for (const e of rd(name).events || []) if (after == null || e.opid > after) cb(e); return null },
  }
}

const src = window.PATCHBAY_REPORT ? inlineSource(window.PATCHBAY_REPORT) : liveSource()

// ---------------------------------------------------------------- small helpers

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else if (k === 'style') el.style.cssText = v
    else el.setAttribute(k, v)
  }
  for (const kid of kids.flat(Infinity)) if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid))
  return el
}
// replaceChildren without the nulls that optional parts leave.
const put = (el, ...kids) => el.replaceChildren(...kids.flat(Infinity).filter((k) => k != null && k !== false))

function s(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag)
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null) continue
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else el.setAttribute(k, v)
  }
  for (const kid of kids.flat(Infinity)) if (kid != null) el.append(kid instanceof Node ? kid : String(kid))
  return el
}

const parse = (text) => { try { return text == null ? null : JSON.parse(text) } catch { return undefined } }
const num = (v) => {
  if (v == null || typeof v === 'boolean') return null
  const n = typeof v === 'number' ? v : parseFloat(String(v))
  return Number.isFinite(n) ? n : null
}
// The runner's duration: an integer is microseconds, a float seconds (RUNNER-FACTS 4).
function seconds(v) {
  if (v == null || typeof v === 'boolean') return null
  if (typeof v === 'number') return Number.isInteger(v) ? v / 1e6 : v
  const t = String(v).trim()
  return /^[0-9]+$/.test(t) ? parseInt(t, 10) / 1e6 : num(t)
}
function stepRow(step) {
  const secs = seconds(step.duration)
  const rate = (b) => (num(b) != null && secs > 0 ? num(b) / (secs * 1e6) : null)
  return { id: step.id ?? '?', secs, down: rate(step.down_bytes), up: rate(step.up_bytes), latency: num(step.latency_ms) }
}
const fmt = (v, d = 2) => (v == null ? '—' : v.toFixed(d))
const base = (p) => String(p || '').split('/').pop()

function linkText(c) {
  if (c == null) return ''
  if (typeof c === 'string') return c
  const parts = []
  if (c.latency_ms) parts.push(`${c.latency_ms} ms`)
  if (c.jitter_ms) parts.push(`±${c.jitter_ms} ms`)
  if (c.loss_pct) parts.push(`${c.loss_pct}% loss`)
  if (c.rate_kbit) parts.push(`${c.rate_kbit} kbit/s`)
  return parts.join(' ') || 'lan'
}
function natText(n) {
  if (n == null || n === 'none' || n === false) return 'public'
  if (typeof n === 'string') return `NAT ${n}`
  const short = { endpoint_independent: 'EI', endpoint_dependent: 'ED', address_dependent: 'AD', address_and_port_dependent: 'APD' }
  return `NAT ${short[n.mapping] || n.mapping || '?'}M/${short[n.filtering] || n.filtering || '?'}F`
}

// ---------------------------------------------------------------- app state

const app = { runs: [], progress: {}, groupList: [], view: null, runEs: null, logTimer: null, events: [], state: null, renderedOnce: false }

function route() {
  const p = new URLSearchParams(location.hash.slice(1))
  return { run: p.get('run'), inv: p.get('inv'), tab: p.get('tab') || 'topology', log: p.get('log'),
    view: p.get('view'), base: p.get('base'), head: p.get('head'), group: p.get('group') }
}
const hrefCompare = (b, hd) => '#' + new URLSearchParams({ view: 'compare', ...(b ? { base: b } : {}), ...(hd ? { head: hd } : {}) })
const hrefGroup = (g) => '#' + new URLSearchParams({ group: g })
const hrefRun = (run, tab, log) => '#' + new URLSearchParams({ run, ...(tab ? { tab } : {}), ...(log ? { log } : {}) })
const hrefInv = (inv) => '#' + new URLSearchParams({ inv })

function simOf(run) {
  const prog = app.progress[run.invocation]
  const sims = (prog && prog.simulations) || []
  return sims.find((x) => base(x.sim_dir) === base(run.name)) || sims.find((x) => x.sim === run.label) || null
}

// An invocation with a combined view: a sim run's (progress, combined results); the
// groups of test labs (`sim.serve --testdir`) have none.
const combinable = (g) => Boolean(g.inv && (app.progress[g.inv] || /^sim-/.test(g.inv)))

function groups() {
  const by = new Map()
  for (const r of app.runs) {
    const key = r.invocation || r.name
    if (!by.has(key)) by.set(key, { inv: r.invocation, runs: [] })
    by.get(key).runs.push(r)
  }
  for (const inv of Object.keys(app.progress)) if (!by.has(inv)) by.set(inv, { inv, runs: [] })
  for (const g of by.values()) {
    const order = ((app.progress[g.inv] || {}).simulations || []).map((x) => base(x.sim_dir) || x.sim)
    const rank = (r) => { const i = order.indexOf(base(r.name)); return i < 0 ? 1e9 : i }
    g.runs.sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name))
  }
  return [...by.entries()].sort((a, b) => b[0].localeCompare(a[0])).map((e) => e[1])
}

async function loadRuns() {
  app.runs = await src.runs()
  const invs = [...new Set(app.runs.map((r) => r.invocation).filter(Boolean))]
  const progs = await Promise.all(invs.map((i) => src.progress(i)))
  invs.forEach((inv, i) => { if (progs[i]) app.progress[inv] = progs[i] })
  app.groupList = await src.groups()
}

// The --repeat group an invocation folder belongs to (null: a run of its own).
function repeatOf(inv) {
  const g = app.groupList.find((x) => x.tries > 1 && x.folders.includes(inv))
  return g ? { group: g, index: g.folders.indexOf(inv) + 1 } : null
}

// ---------------------------------------------------------------- picker

function statusBadge(text, cls) {
  return text ? h('span', { class: `badge st-${cls || text}` }, text) : null
}

let pickerSig = null
function renderPicker() {
  const nav = document.getElementById('picker')
  const cur = route()
  const sig = JSON.stringify([cur.run, cur.inv, cur.view, cur.group, app.runs, app.progress, app.groupList])
  if (sig === pickerSig) return // unchanged: keep the DOM (and the reader's place in it)
  pickerSig = sig
  const gs = groups()
  if (!gs.length) { nav.replaceChildren(h('div', { class: 'empty' }, 'no runs in this work dir yet')); return }
  const sections = gs.map((g) => {
    const prog = app.progress[g.inv]
    const head = h('div', { class: 'inv-head' }, h('span', { class: 'inv-name' }, g.inv || 'run'),
      prog ? statusBadge(prog.status === 'running' ? `running ${prog.completed ?? 0}/${prog.total ?? '?'}` : prog.error ? `${prog.error} failed` : 'done',
        prog.status === 'running' ? 'running' : prog.error ? 'error' : 'ok') : null)
    const entries = []
    const nSims = Math.max(g.runs.length, (prog && prog.total) || 0)
    if (combinable(g) && nSims > 1) {
      entries.push(h('a', { class: 'entry combined' + (cur.inv === g.inv ? ' active' : ''), href: hrefInv(g.inv), 'data-inv': g.inv }, `combined (${nSims} sims)`))
    }
    for (const r of g.runs) {
      const sim = simOf(r)
      entries.push(h('a', { class: 'entry run' + (cur.run === r.name ? ' active' : ''), href: hrefRun(r.name), 'data-run': r.name },
        h('span', { class: 'label' }, r.label || base(r.name)),
        statusBadge(r.status || 'no state', r.status ? null : 'unknown'),
        sim && sim.status !== r.status ? statusBadge(sim.status) : null))
    }
    // Sims that failed before their folder held events (a parse error): listed with the error.
    const listed = new Set(g.runs.map((r) => base(r.name)))
    for (const x of (prog && prog.simulations) || []) {
      if (listed.has(base(x.sim_dir)) || listed.has(x.sim)) continue
      entries.push(h('div', { class: 'entry norun', title: x.error || '' }, h('span', { class: 'label' }, x.sim), statusBadge(x.status)))
    }
    const rep = g.inv ? repeatOf(g.inv) : null
    if (rep) head.prepend(h('span', { class: 'try' }, `try ${rep.index}/${rep.group.tries} `))
    return h('section', { class: 'inv', 'data-inv': g.inv || '' }, head, ...entries)
  })
  // The tries of a --repeat, together under one head, first try first.
  const out = [], done = new Set()
  sections.forEach((sec, i) => {
    const rep = gs[i].inv ? repeatOf(gs[i].inv) : null
    if (!rep) { out.push(sec); return }
    if (done.has(rep.group.group)) return
    done.add(rep.group.group)
    const mine = sections.filter((_, j) => gs[j].inv && rep.group.folders.includes(gs[j].inv))
    mine.sort((a, b) => rep.group.folders.indexOf(a.dataset.inv) - rep.group.folders.indexOf(b.dataset.inv))
    out.push(h('div', { class: 'repeat-group', 'data-group': rep.group.group },
      h('a', { class: 'entry group-head' + (cur.group === rep.group.group ? ' active' : ''), href: hrefGroup(rep.group.group) },
        h('span', { class: 'label', title: rep.group.group }, `${rep.group.tries} tries (--repeat)`),
        statusBadge(`${rep.group.passes}/${rep.group.runs} ok`, rep.group.passes === rep.group.runs ? 'ok' : 'error')),
      ...mine))
  })
  // A report offers the view only when it was written with --baseline.
  const cmp = (src.live && app.groupList.length) || (!src.live && window.PATCHBAY_REPORT.compare)
    ? h('a', { class: 'entry compare-link' + (cur.view === 'compare' ? ' active' : ''), href: hrefCompare(cur.base, cur.head) }, src.live ? 'compare two runs' : 'compare with the baseline')
    : null
  put(nav, cmp, ...out)
}

// ---------------------------------------------------------------- views

function stopLive() {
  if (app.runEs) app.runEs.close()
  app.runEs = null
  clearTimeout(app.logTimer)
}

async function renderView() {
  const cur = route()
  const main = document.getElementById('main')
  if (cur.view === 'compare') { stopLive(); app.view = 'compare'; return renderCompare(main, cur) }
  if (cur.group) { stopLive(); app.view = `group:${cur.group}`; return renderGroup(main, cur.group) }
  if (!cur.run && !cur.inv) {
    // Nothing chosen: the newest invocation's combined view, or its only run.
    const g = groups()[0]
    if (!g) { main.replaceChildren(h('div', { class: 'empty' }, 'no runs yet: they appear here as they start')); return }
    history.replaceState(null, '', combinable(g) && g.runs.length !== 1 ? hrefInv(g.inv) : hrefRun(g.runs[0].name))
    renderPicker()
    return renderView()
  }
  const key = cur.run ? `run:${cur.run}` : `inv:${cur.inv}`
  if (app.view !== key) { stopLive(); app.view = key; app.events = []; app.state = null }
  if (cur.inv) return renderInvocation(main, cur.inv)
  return renderRun(main, cur)
}

async function simJson(run) {
  const text = await src.file(run, 'sim.json')
  return { text, data: parse(text) }
}

function errorBanner(run, sim, logs) {
  if (!sim || !sim.error) return null
  const e = sim.error
  const st = e.step
  const where = st ? `step ${st.index ?? '?'}: ${st.action || '?'}${st.id ? ` "${st.id}"` : ''}${st.device ? ` on ${st.device}` : ''}` : `phase ${e.phase || '?'}`
  let link = null
  if (st && st.device) {
    const stem = `device.${st.device}.${st.id || st.device}`
    const have = new Set(logs.map((l) => l.path))
    const log = [`${stem}.stderr.log`, `${stem}.stdout.log`].find((p) => have.has(p))
    if (log) link = h('a', { href: hrefRun(run, 'logs', log), class: 'errlog' }, `open ${log}`)
  }
  return h('div', { class: 'error-banner', role: 'alert' },
    h('strong', {}, `failed at ${where}`), e.phase ? h('span', { class: 'phase' }, ` (${e.phase})`) : null,
    h('pre', { class: 'errmsg' }, e.message || '(no message)'), link)
}

async function renderRun(main, cur) {
  const run = app.runs.find((r) => r.name === cur.run)
  const [state, sj, logs] = await Promise.all([src.state(cur.run), simJson(cur.run), src.logs(cur.run)])
  app.state = state
  const tabs = ['topology', 'results', 'logs', 'timeline']
  const title = (run && run.label) || (state && state.label) || base(cur.run)
  const simEntry = run ? simOf(run) : null
  const notes = []
  if (!run) notes.push(h('div', { class: 'note' }, 'this run is no longer in the work dir'))
  if (!state) notes.push(h('div', { class: 'note' }, 'no readable state.json yet: the run is starting or was cut short'))
  if (sj.text != null && sj.data === undefined) notes.push(h('div', { class: 'note' }, 'sim.json is incomplete (still being written?)'))
  const body = h('div', { id: 'tab-body', class: `tab-${cur.tab}` })
  put(main,
    h('div', { class: 'run-head' }, h('h1', {}, title), h('span', { class: 'run-name' }, cur.run),
      statusBadge((state && state.status) || (run && run.status) || 'no state', state || run?.status ? null : 'unknown'),
      sj.data ? statusBadge(sj.data.status) : simEntry ? statusBadge(simEntry.status) : null,
      sj.data && sj.data.runtime_ms != null ? h('span', { class: 'muted' }, ` ${(sj.data.runtime_ms / 1000).toFixed(1)} s`) : null),
    errorBanner(cur.run, sj.data, logs), ...notes,
    h('div', { class: 'tabs', role: 'tablist' }, tabs.map((t) => h('a', { class: 'tab' + (t === cur.tab ? ' active' : ''), href: hrefRun(cur.run, t), 'data-tab': t }, t))),
    body)
  if (!app.runEs && (src.live || !app.events.length)) {
    const after = app.events.length ? app.events[app.events.length - 1].opid : null
    app.runEs = src.subscribeEvents(cur.run, after, onEvent)
  }
  if (cur.tab === 'topology') renderTopology(body, state)
  else if (cur.tab === 'results') await renderResults(body, cur.run, sj.data)
  else if (cur.tab === 'logs') renderLogs(body, cur.run, logs, cur.log)
  else renderTimeline(body)
}

const TOPO_KINDS = new Set(['router_added', 'device_added', 'link_condition_changed', 'link_down', 'link_up', 'ix_created'])
let stateTimer = null
function onEvent(e) {
  if (app.events.length && e.opid <= app.events[app.events.length - 1].opid) return
  app.events.push(e)
  const cur = route()
  if (cur.tab === 'timeline') { clearTimeout(stateTimer); stateTimer = setTimeout(() => { const b = document.getElementById('tab-body'); if (b) renderTimeline(b) }, 100) }
  if (src.live && TOPO_KINDS.has(e.kind) && cur.tab === 'topology') {
    clearTimeout(stateTimer)
    stateTimer = setTimeout(async () => {
      const st = await src.state(cur.run)
      const b = document.getElementById('tab-body')
      if (st && b && route().tab === 'topology' && route().run === cur.run && JSON.stringify(st) !== JSON.stringify(app.state)) { app.state = st; renderTopology(b, st) }
    }, 300)
  }
}

// ---------------------------------------------------------------- topology

function layoutTopology(state) {
  const routers = state.routers || {}, devices = state.devices || {}
  const kids = new Map([['__ix', []]])
  for (const name of Object.keys(routers).sort()) kids.set(name, [])
  for (const [name, r] of Object.entries(routers).sort()) {
    const up = r.upstream && routers[r.upstream] ? r.upstream : '__ix'
    kids.get(up).push({ type: 'router', name })
  }
  for (const [name, d] of Object.entries(devices).sort()) {
    const ifs = d.interfaces || []
    const main = ifs.find((i) => i.name === d.default_via) || ifs[0]
    const at = main && kids.has(main.router) ? main.router : '__ix'
    kids.get(at).push({ type: 'device', name })
  }
  const pos = new Map()
  let col = 0, depthMax = 0
  const place = (key, depth, seen) => {
    depthMax = Math.max(depthMax, depth)
    const ch = seen.has(key) ? [] : (kids.get(key) || [])
    seen.add(key)
    if (!ch.length) { pos.set(key, { x: col++, depth }); return }
    const xs = ch.map((c) => { place(c.type === 'router' ? c.name : `dev:${c.name}`, depth + 1, seen); return pos.get(c.type === 'router' ? c.name : `dev:${c.name}`).x })
    pos.set(key, { x: (Math.min(...xs) + Math.max(...xs)) / 2, depth })
  }
  place('__ix', 0, new Set())
  return { pos, cols: Math.max(col, 1), depthMax }
}

function renderTopology(body, state) {
  if (!state) { body.replaceChildren(h('div', { class: 'empty' }, 'no topology yet (state.json not written or not readable)')); return }
  const { pos, cols, depthMax } = layoutTopology(state)
  const W = 190, H = 130, PAD = 20
  const width = Math.max(cols * W, 420), height = depthMax * H + 2 * PAD + 70
  const at = (key) => { const p = pos.get(key); return { x: PAD + p.x * W + W / 2 - 10, y: PAD + p.depth * H + 35 } }
  const edges = s('g', { class: 'edges' }), nodes = s('g', { class: 'nodes' })
  const detail = h('div', { class: 'detail', id: 'node-detail' }, h('div', { class: 'muted' }, 'click a node for its details'))
  const show = (title, obj) => detail.replaceChildren(h('h3', {}, title), kv(obj))
  const ix = state.ix || {}
  const ixp = at('__ix')
  nodes.append(s('g', { class: 'node topo-ix', 'data-name': 'ix', transform: `translate(${ixp.x},${ixp.y})`, onclick: () => show('IX (internet)', ix) },
    s('rect', { x: -80, y: -22, width: 160, height: 44, rx: 22 }),
    s('text', { y: -3, class: 'name' }, 'IX'), s('text', { y: 13, class: 'sub' }, ix.cidr || '')))
  for (const [name, r] of Object.entries(state.routers || {})) {
    const p = at(name)
    const up = r.upstream && pos.has(r.upstream) ? at(r.upstream) : ixp
    edges.append(s('line', { x1: up.x, y1: up.y, x2: p.x, y2: p.y }))
    if (r.uplink_ip) edges.append(s('text', { x: (up.x + p.x) / 2 + 4, y: (up.y + p.y) / 2, class: 'elabel' }, r.uplink_ip))
    const nat = natText(r.nat)
    nodes.append(s('g', { class: 'node topo-router', 'data-name': name, transform: `translate(${p.x},${p.y})`, onclick: () => show(`router ${name}`, r) },
      s('rect', { x: -78, y: -30, width: 156, height: 60, rx: 6 }),
      s('text', { y: -12, class: 'name' }, name),
      s('rect', { x: -40, y: -4, width: 80, height: 16, rx: 8, class: 'nat ' + (nat === 'public' ? 'public' : 'natted') }),
      s('text', { y: 8, class: 'badge-text' }, nat),
      s('text', { y: 25, class: 'sub' }, r.downstream_cidr || '')))
  }
  for (const [name, d] of Object.entries(state.devices || {})) {
    const p = at(`dev:${name}`)
    const ifs = d.interfaces || []
    ifs.forEach((i, n) => {
      const r = pos.has(i.router) ? at(i.router) : ixp
      const cond = linkText(i.link_condition)
      edges.append(s('line', { x1: r.x, y1: r.y, x2: p.x, y2: p.y, class: n && i.name !== d.default_via ? 'secondary' : (cond ? 'impaired' : '') }))
      if (cond) edges.append(s('text', { x: (r.x + p.x) / 2 + 4, y: (r.y + p.y) / 2 + 12 * n, class: 'elabel cond' }, `${i.name}: ${cond}`))
    })
    const lines = ifs.map((i) => `${i.name} ${i.ip || '—'}`)
    const hgt = 26 + lines.length * 14
    nodes.append(s('g', { class: 'node topo-device', 'data-name': name, transform: `translate(${p.x},${p.y})`, onclick: () => show(`device ${name}`, d) },
      s('rect', { x: -78, y: -hgt / 2, width: 156, height: hgt, rx: 6 }),
      s('text', { y: -hgt / 2 + 16, class: 'name' }, name),
      lines.map((l, n) => s('text', { y: -hgt / 2 + 31 + n * 14, class: 'sub' }, l))))
  }
  const svg = s('svg', { class: 'topology', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'topology' }, edges, nodes)
  body.replaceChildren(h('div', { class: 'topo-wrap' }, h('div', { class: 'svg-wrap' }, svg), detail))
}

function kv(obj) {
  if (obj == null || typeof obj !== 'object') return h('span', {}, String(obj))
  return h('table', { class: 'kv' }, Object.entries(obj).map(([k, v]) =>
    h('tr', {}, h('th', {}, k), h('td', {}, v != null && typeof v === 'object' ? (Array.isArray(v) && v.every((x) => typeof x !== 'object') ? v.join(', ') : kv(v)) : String(v)))))
}

// ---------------------------------------------------------------- results

const METRICS = [['secs', 'Duration (s)', 3], ['down', 'Down MB/s', 2], ['up', 'Up MB/s', 2], ['latency', 'Latency (ms)', 2]]

function barTable(rows, lead) {
  const max = Object.fromEntries(METRICS.map(([k]) => [k, Math.max(0, ...rows.map((r) => r[k] || 0))]))
  return h('table', { class: 'results' },
    h('thead', {}, h('tr', {}, lead.map(([, t]) => h('th', {}, t)), METRICS.map(([, t]) => h('th', { class: 'num' }, t)))),
    h('tbody', {}, rows.map((r) => h('tr', { 'data-step': r.id },
      lead.map(([k]) => h('td', {}, r[k] instanceof Node ? r[k] : String(r[k] ?? ''))),
      METRICS.map(([k, , d]) => h('td', { class: 'num' },
        r[k] != null && max[k] > 0 ? h('div', { class: `bar bar-${k}`, style: `width:${(100 * r[k]) / max[k]}%` }) : null,
        h('span', {}, fmt(r[k], d))))))))
}

async function renderResults(body, run, sim) {
  const data = parse(await src.file(run, 'results.json'))
  if (!data || !Array.isArray(data.steps) || !data.steps.length) {
    const why = sim && sim.status === 'error' ? 'no results: the sim failed (see above)' : sim ? 'this sim recorded no results' : 'no results yet'
    body.replaceChildren(h('div', { class: 'empty' }, why))
    return
  }
  body.replaceChildren(h('h2', {}, 'steps'), barTable(data.steps.map(stepRow), [['id', 'Step']]))
}

// ---------------------------------------------------------------- logs

function renderLogs(body, run, logs, chosen) {
  const byNode = new Map()
  for (const l of logs) { if (!byNode.has(l.node)) byNode.set(l.node, []); byNode.get(l.node).push(l) }
  const pick = chosen && logs.some((l) => l.path === chosen) ? chosen : null
  const list = h('div', { class: 'log-list' }, [...byNode.entries()].map(([node, ls]) =>
    h('div', { class: 'log-node' }, h('div', { class: 'node-name' }, node === '_run' ? 'run files' : node),
      ls.map((l) => h('a', { class: 'log-file' + (l.path === pick ? ' active' : ''), href: hrefRun(run, 'logs', l.path), 'data-path': l.path, title: l.kind }, l.path.replace(`device.${node}.`, '').replace(`router.${node}.`, ''))))))
  const tracing = pick && logs.some((l) => l.path === pick && l.kind === 'tracing_jsonl')
  const view = h(tracing ? 'div' : 'pre', { class: 'log-view' + (tracing ? ' trace-view' : ''), id: 'log-view' }, pick ? '' : logs.length ? 'pick a log' : 'no logs yet')
  const url = pick && src.logUrl(run, pick)
  const headline = pick ? h('div', { class: 'log-title' }, h('strong', {}, pick), url ? h('a', { href: url, target: '_blank', class: 'raw' }, 'raw') : null, src.live ? h('span', { class: 'muted tailing' }, ' live tail') : null) : null
  body.replaceChildren(h('div', { class: 'logs-wrap' }, list, h('div', { class: 'log-pane' }, headline, view)))
  if (tracing) tailTracing(run, pick, view)
  else if (pick) tailLog(run, pick, view)
}

// A log's first view shows its last TAIL_START bytes (the raw link has all of it); then
// it follows the log a server window at a time.
const TAIL_START = 256 * 1024

function tailLog(run, path, view) {
  const dec = new TextDecoder()
  followLog(run, path, view, (bytes, whole) => {
    const atEnd = view.scrollTop + view.clientHeight >= view.scrollHeight - 4
    view.append(dec.decode(bytes, { stream: !whole }))
    if (atEnd && !whole) view.scrollTop = view.scrollHeight
  }, (skipped) => view.append(`[... ${skipped} earlier bytes not shown: open "raw" for the whole log ...]\n`))
}

// Reads a log for `view`: onBytes(bytes, whole) with all of it (a report) or its last
// TAIL_START bytes and then what it grows by (live); onSkipped(n) when n bytes were left out.
function followLog(run, path, view, onBytes, onSkipped) {
  let offset = null
  const tick = async () => {
    if (offset === null) {
      const head = await src.logChunk(run, path, 0, src.live ? 0 : null)
      if (view.isConnected === false) return
      if (head && !src.live) { onBytes(head.bytes, true); return }
      const size = head ? head.size : 0
      offset = size > TAIL_START ? size - TAIL_START : 0
      if (offset) onSkipped(offset)
    }
    const chunk = await src.logChunk(run, path, offset)
    if (view.isConnected === false) return
    let more = false
    if (chunk && chunk.bytes.length) {
      offset += chunk.bytes.length
      more = offset < chunk.size
      onBytes(chunk.bytes, false)
    }
    if (src.live) app.logTimer = setTimeout(tick, more ? 0 : 1000)
  }
  tick()
}

// ---------------------------------------------------------------- tracing logs

// `*.tracing.jsonl` (tracing-subscriber's JSON, as patchbay's library writes a node's
// log) as readable lines: time, level, spans, target, message, fields; a level filter
// and a text search that also apply to lines still arriving.
const LEVELS = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR']
const levelRank = (l) => LEVELS.indexOf(String(l || '').toUpperCase())
const fieldText = (v) => (typeof v === 'string' ? JSON.stringify(v) : v != null && typeof v === 'object' ? JSON.stringify(v) : String(v))

function tracingRow(line) {
  let v = null
  try { v = JSON.parse(line) } catch { /* not JSON: shown as it is */ }
  if (!v || typeof v !== 'object' || Array.isArray(v)) return h('div', { class: 'tr tr-raw', 'data-level': '' }, h('span', { class: 'tr-msg' }, line))
  const level = String(v.level || '').toUpperCase()
  const fields = v.fields && typeof v.fields === 'object' && !Array.isArray(v.fields) ? v.fields : {}
  const ts = typeof v.timestamp === 'string' ? v.timestamp : ''
  const time = (ts.match(/T(\d\d:\d\d:\d\d(?:\.\d+)?)/) || [])[1] || ts
  const spans = (Array.isArray(v.spans) ? v.spans : []).filter((x) => x && typeof x === 'object')
  const spanText = spans.map((x) => {
    const kv = Object.entries(x).filter(([k]) => k !== 'name').map(([k, y]) => `${k}=${fieldText(y)}`)
    return `${x.name ?? '?'}${kv.length ? `{${kv.join(' ')}}` : ''}`
  }).join(':')
  const lv = level.toLowerCase()
  return h('div', { class: `tr lvl-${lv}`, 'data-level': level, title: ts },
    h('span', { class: 'tr-time' }, time),
    h('span', { class: `tr-level lvl-${lv}` }, level || '?'),
    spanText ? h('span', { class: 'tr-spans' }, spanText + ':') : null,
    h('span', { class: 'tr-target' }, `${v.target ?? ''}:`),
    h('span', { class: 'tr-msg' }, fields.message == null ? '' : typeof fields.message === 'string' ? fields.message : fieldText(fields.message)),
    Object.entries(fields).filter(([k]) => k !== 'message').map(([k, y]) => h('span', { class: 'tr-field' }, h('i', {}, k), '=', fieldText(y))))
}

function tailTracing(run, path, view) {
  const filter = app.traceFilter || (app.traceFilter = { min: 0, q: '' })
  const rows = h('div', { class: 'tr-rows' })
  const count = h('span', { class: 'tr-count muted' })
  let total = 0, shown = 0
  const passes = (row) => (!row.dataset.level || levelRank(row.dataset.level) >= filter.min) &&
    (!filter.q || row.textContent.toLowerCase().includes(filter.q))
  const show = (row) => { row.hidden = !passes(row); if (!row.hidden) shown++ }
  const recount = () => { count.textContent = `${shown} of ${total} lines` }
  const refilter = () => { shown = 0; for (const row of rows.children) if (!row.classList.contains('tr-note')) show(row); recount() }
  const level = h('select', { class: 'tr-level-filter', 'aria-label': 'lowest level shown', onchange: (e) => { filter.min = Number(e.target.value); refilter() } },
    LEVELS.map((l, i) => h('option', { value: String(i), selected: i === filter.min ? 'selected' : null }, i ? `${l} and above` : 'all levels')))
  const search = h('input', { type: 'search', class: 'tr-search', placeholder: 'search these lines', value: filter.q, 'aria-label': 'search', oninput: (e) => { filter.q = e.target.value.trim().toLowerCase(); refilter() } })
  view.replaceChildren(h('div', { class: 'tr-tools' }, level, search, count), rows)
  recount()
  const dec = new TextDecoder()
  let partial = '', midLine = false
  followLog(run, path, view, (bytes, whole) => {
    const lines = (partial + dec.decode(bytes, { stream: !whole })).split('\n')
    partial = whole ? '' : lines.pop()
    if (midLine) { lines.shift(); midLine = false } // the tail started inside a line
    const atEnd = view.scrollTop + view.clientHeight >= view.scrollHeight - 4
    for (const raw of lines) {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw
      if (!line.trim()) continue
      const row = tracingRow(line)
      total++
      show(row)
      rows.append(row)
    }
    recount()
    if (atEnd && !whole) view.scrollTop = view.scrollHeight
  }, (skipped) => {
    midLine = true
    rows.append(h('div', { class: 'tr-note muted' }, `[... ${skipped} earlier bytes not shown: open "raw" for the whole log ...]`))
  })
}

// ---------------------------------------------------------------- timeline

function eventNode(e) { return e.name || e.device || e.router || e.node || 'lab' }

function renderTimeline(body) {
  const evs = app.events
  if (!evs.length) { body.replaceChildren(h('div', { class: 'empty' }, 'no events yet')); return }
  const t0 = Date.parse(evs[0].timestamp) || 0
  const rel = (e) => ((Date.parse(e.timestamp) || t0) - t0) / 1000
  const lanes = [...new Set(evs.map(eventNode))]
  const span = Math.max(rel(evs[evs.length - 1]), 0.001)
  const W = 760, LH = 20, L = 110
  const chart = s('svg', { class: 'lanes', viewBox: `0 0 ${W + L + 10} ${lanes.length * LH + 24}`, width: W + L + 10, height: lanes.length * LH + 24 },
    lanes.map((n, i) => [s('text', { x: 4, y: i * LH + 14, class: 'lane-name' }, n), s('line', { x1: L, x2: L + W, y1: i * LH + 10, y2: i * LH + 10, class: 'lane' })]),
    evs.map((e) => s('circle', { cx: L + (W * rel(e)) / span, cy: lanes.indexOf(eventNode(e)) * LH + 10, r: 5, class: `ev ev-${e.kind}` }, s('title', {}, `+${rel(e).toFixed(3)} s ${e.kind} ${eventNode(e)}`))),
    s('text', { x: L, y: lanes.length * LH + 20, class: 'lane-name' }, '0 s'), s('text', { x: L + W - 40, y: lanes.length * LH + 20, class: 'lane-name' }, `${span.toFixed(2)} s`))
  const skip = new Set(['opid', 'timestamp', 'kind'])
  const table = h('table', { class: 'events' },
    h('thead', {}, h('tr', {}, ['time', 'opid', 'kind', 'node', 'details'].map((t) => h('th', {}, t)))),
    h('tbody', {}, evs.map((e) => h('tr', { class: `ev-row ev-${e.kind}` }, h('td', {}, `+${rel(e).toFixed(3)} s`), h('td', {}, e.opid), h('td', { class: 'kind' }, e.kind), h('td', {}, eventNode(e)),
      h('td', { class: 'details' }, JSON.stringify(Object.fromEntries(Object.entries(e).filter(([k]) => !skip.has(k)))))))))
  body.replaceChildren(h('div', { class: 'svg-wrap' }, chart), table)
}

// ---------------------------------------------------------------- invocation summary

async function renderInvocation(main, inv) {
  const runs = app.runs.filter((r) => r.invocation === inv)
  const [prog, combined, sims] = await Promise.all([src.progress(inv), src.combined(inv), Promise.all(runs.map((r) => simJson(r.name)))])
  if (prog) app.progress[inv] = prog
  let results = combined && Array.isArray(combined.runs) && combined.runs.length ? combined.runs : null
  if (!results) { // still running: put it together from each sim's results.json
    results = (await Promise.all(runs.map(async (r) => ({ sim: r.label || base(r.name), sim_dir: base(r.name), run: r.name, ...(parse(await src.file(r.name, 'results.json')) || {}) }))))
  }
  const simsList = (prog && prog.simulations) || runs.map((r) => ({ sim: r.label || base(r.name), sim_dir: base(r.name), status: r.status }))
  const runFor = (x) => runs.find((r) => base(r.name) === base(x.sim_dir)) || runs.find((r) => r.label === x.sim)
  const resFor = (x) => results.find((c) => base(c.sim_dir) === base(x.sim_dir) || c.sim === x.sim)
  const summaryRows = simsList.map((x) => {
    const r = runFor(x)
    const sj = r ? sims[runs.indexOf(r)].data : null
    const steps = ((resFor(x) || {}).steps || []).map(stepRow)
    const mx = (k) => { const v = steps.map((st) => st[k]).filter((v) => v != null); return v.length ? Math.max(...v) : null }
    const err = (sj && sj.error) || (x.error ? { message: x.error } : null)
    const stepTxt = err && err.step ? `step ${err.step.index ?? '?'} ${err.step.id || err.step.action || ''}: ` : ''
    return h('tr', { 'data-sim': x.sim, class: `st-row-${(sj && sj.status) || x.status}` },
      h('td', {}, r ? h('a', { href: hrefRun(r.name) }, x.sim) : x.sim), h('td', {}, statusBadge((sj && sj.status) || x.status)),
      h('td', { class: 'num' }, x.runtime_ms != null ? (x.runtime_ms / 1000).toFixed(1) : sj && sj.runtime_ms != null ? (sj.runtime_ms / 1000).toFixed(1) : '—'),
      h('td', { class: 'num' }, steps.length), h('td', { class: 'num' }, fmt(mx('down'))), h('td', { class: 'num' }, fmt(mx('up'))), h('td', { class: 'num' }, fmt(mx('latency'))),
      h('td', { class: 'err' }, err ? (r ? h('a', { href: hrefRun(r.name), class: 'errlink' }, stepTxt + (err.message || '')) : stepTxt + (err.message || '')) : ''))
  })
  const all = []
  for (const x of simsList) for (const st of ((resFor(x) || {}).steps || [])) all.push({ sim: x.sim, ...stepRow(st) })
  const head = prog ? h('div', { class: 'inv-status' }, statusBadge(prog.status), ` ${prog.completed ?? '?'}/${prog.total ?? '?'} done, ${prog.ok ?? 0} ok, ${prog.error ?? 0} failed`,
    prog.current_sim && prog.status === 'running' ? ` — running ${prog.current_sim}` : '', prog.started_at ? h('span', { class: 'muted' }, ` started ${prog.started_at}`) : null) : null
  put(main, h('div', { class: 'run-head' }, h('h1', {}, inv), h('span', { class: 'run-name' }, 'combined')), head,
    h('h2', {}, 'summary'),
    h('table', { class: 'summary' }, h('thead', {}, h('tr', {}, ['Sim', 'Status', 'Runtime (s)', 'Steps', 'Max Down MB/s', 'Max Up MB/s', 'Max Latency (ms)', 'Error'].map((t) => h('th', {}, t)))), h('tbody', {}, summaryRows)),
    h('h2', {}, 'all steps'), all.length ? barTable(all, [['sim', 'Sim'], ['id', 'Step']]) : h('div', { class: 'empty' }, 'no step results yet'))
}

// ---------------------------------------------------------------- compare (sim.compare)

// metric -> [label, digits, which way is better: 1 higher, -1 lower]
const CMP_METRICS = {
  pass_rate: ['pass rate %', 1, 1], runtime_s: ['runtime s', 3, -1], duration_s: ['duration s', 3, -1],
  down_mbit_s: ['down Mbit/s', 1, 1], up_mbit_s: ['up Mbit/s', 1, 1], latency_ms: ['latency ms', 2, -1],
  down_bytes: ['down bytes', 0, 1], up_bytes: ['up bytes', 0, 1],
}
const cmpMeta = (m) => CMP_METRICS[m] || [m, 3, 0]
const cmpVal = (m, st) => (st == null ? '—' : st.median.toFixed(cmpMeta(m)[1]))
function sideText(side) {
  return side.tries > 1 ? `${side.label} (${side.tries} tries)` : `${side.label} (1 try)`
}

function groupOption(g, chosen) {
  const sims = g.sims.length > 3 ? `${g.sims.slice(0, 3).join(', ')}, …` : g.sims.join(', ')
  return h('option', { value: g.group, selected: g.group === chosen ? 'selected' : null },
    `${g.group}${g.tries > 1 ? ` (${g.tries} tries)` : ''}: ${sims}`)
}

async function renderCompare(main, cur) {
  const [list, data] = await Promise.all([src.groups(), src.compare(cur.base, cur.head)])
  const baseName = (data.base && data.base.label) || cur.base
  const headName = (data.head && data.head.label) || cur.head || data.head
  const pick = (role, chosen) => h('label', { class: 'cmp-pick' }, `${role} `,
    h('select', { id: `cmp-${role}`, onchange: (e) => {
      const b = role === 'base' ? e.target.value : document.getElementById('cmp-base').value
      const hd = role === 'head' ? e.target.value : document.getElementById('cmp-head').value
      location.hash = hrefCompare(b, hd)
    } }, h('option', { value: '' }, role === 'base' ? '(the newest earlier run of the same sims)' : '(latest)'), list.map((g) => groupOption(g, chosen))))
  const pickers = src.live ? h('div', { class: 'cmp-pickers' }, pick('base', baseName), pick('head', typeof headName === 'string' ? headName : null)) : null
  if (data.error) {
    put(main, h('div', { class: 'run-head' }, h('h1', {}, 'compare')), pickers, h('div', { class: 'empty cmp-error' }, data.error))
    return
  }
  const rows = []
  for (const sim of data.sims) {
    if (sim.in !== 'both') continue
    rows.push(h('tr', { class: 'cmp-sim', 'data-sim': sim.sim, 'data-metric': 'status' }, h('td', {}, sim.sim), h('td', {}), h('td', {}, 'status'),
      h('td', {}, statusBadge(sim.base.status, sim.base.failures ? 'error' : 'ok')), h('td', {}, statusBadge(sim.head.status, sim.head.failures ? 'error' : 'ok')), h('td', {}), h('td', {})))
    for (const r of sim.rows) {
      if (r.metric === 'pass_rate' && sim.base.tries === 1 && sim.head.tries === 1) continue
      const [label, digits, better] = cmpMeta(r.metric)
      const pct = r.change_pct
      const cls = pct == null || Math.abs(pct) < 1 || !better ? '' : (pct * better > 0 ? 'better' : 'worse')
      const n = (st) => (data.medians && st && r.metric !== 'pass_rate' ? h('span', { class: 'muted' }, ` (${st.n})`) : null)
      rows.push(h('tr', { 'data-sim': sim.sim, 'data-step': r.step || '', 'data-metric': r.metric, class: cls },
        h('td', {}, sim.sim), h('td', {}, r.step || ''), h('td', {}, label),
        h('td', { class: 'num' }, cmpVal(r.metric, r.base), n(r.base)), h('td', { class: 'num' }, cmpVal(r.metric, r.head), n(r.head)),
        h('td', { class: 'num' }, r.change == null ? '—' : (r.change >= 0 ? '+' : '') + r.change.toFixed(digits)),
        h('td', { class: 'num pct' }, r.base && r.head ? (pct == null ? 'n/a' : `${pct >= 0 ? '+' : ''}${pct.toFixed(1)}%`) : '—')))
    }
  }
  const only = (side) => data[`only_in_${side}`].length ? h('div', { class: `note only-${side}` }, `only in ${side}: ${data[`only_in_${side}`].join(', ')}`) : null
  const crossed = (data.thresholds_crossed || []).map((c) => h('div', { class: 'error-banner' }, `${c.threshold} crossed by ${c.sim}${c.step ? ` step ${c.step}` : ''}: ${cmpMeta(c.metric)[0]} (${c.why})`))
  put(main,
    h('div', { class: 'run-head' }, h('h1', {}, 'compare'), h('span', { class: 'run-name' }, `${sideText(data.base)} → ${sideText(data.head)}`)),
    pickers,
    h('div', { class: 'cmp-sides' }, h('div', {}, h('strong', {}, 'base: '), sideText(data.base), ' ', data.base.folders.map((f) => h('a', { href: hrefInv(f), class: 'cmp-folder' }, f))),
      h('div', {}, h('strong', {}, 'head: '), sideText(data.head), ' ', data.head.folders.map((f) => h('a', { href: hrefInv(f), class: 'cmp-folder' }, f)))),
    data.medians ? h('div', { class: 'note' }, `values are medians over the tries (${data.base.tries} in base, ${data.head.tries} in head); (n): how many tries had the value`) : null,
    ...crossed,
    rows.length ? h('table', { class: 'compare' }, h('thead', {}, h('tr', {}, ['Sim', 'Step', 'Metric', 'Base', 'Head', 'Change', '%'].map((t) => h('th', {}, t)))), h('tbody', {}, rows))
      : h('div', { class: 'empty' }, 'no sim ran on both sides'),
    only('base'), only('head'))
}

// ---------------------------------------------------------------- a --repeat group

async function renderGroup(main, name) {
  const data = await src.groupSummary(name)
  if (!data) { put(main, h('div', { class: 'empty' }, `no group ${name}`)); return }
  const stat = (m, st, k) => (st ? st[k].toFixed(cmpMeta(m)[1]) : '—')
  const simRows = data.sims.map((x) => h('tr', { 'data-sim': x.sim },
    h('td', {}, x.sim), h('td', { class: 'num' }, x.tries), h('td', { class: 'num' }, x.passes), h('td', { class: 'num' }, x.failures),
    h('td', { class: 'num pass-rate' }, `${(x.pass_rate * 100).toFixed(0)}%`),
    ['min', 'median', 'max'].map((k) => h('td', { class: 'num' }, stat('runtime_s', x.runtime_s, k)))))
  const stepRows = []
  for (const x of data.sims) for (const [step, ms] of Object.entries(x.steps)) for (const [m, st] of Object.entries(ms)) {
    stepRows.push(h('tr', { 'data-sim': x.sim, 'data-step': step, 'data-metric': m }, h('td', {}, x.sim), h('td', {}, step), h('td', {}, cmpMeta(m)[0]),
      h('td', { class: 'num' }, st.n), ['min', 'median', 'max'].map((k) => h('td', { class: 'num' }, stat(m, st, k)))))
  }
  put(main, h('div', { class: 'run-head' }, h('h1', {}, name), h('span', { class: 'run-name' }, `${data.tries} tries`)),
    h('div', { class: 'cmp-sides' }, 'tries: ', data.folders.map((f, i) => h('a', { href: hrefInv(f), class: 'cmp-folder' }, `${i + 1}: ${f}`))),
    h('h2', {}, 'pass rate'),
    h('table', { class: 'repeat-summary' }, h('thead', {}, h('tr', {}, ['Sim', 'Tries', 'Passed', 'Failed', 'Pass rate', 'Runtime s min', 'median', 'max'].map((t) => h('th', {}, t)))), h('tbody', {}, simRows)),
    h('h2', {}, 'metrics over the tries'),
    stepRows.length ? h('table', { class: 'repeat-steps' }, h('thead', {}, h('tr', {}, ['Sim', 'Step', 'Metric', 'n', 'min', 'median', 'max'].map((t) => h('th', {}, t)))), h('tbody', {}, stepRows))
      : h('div', { class: 'empty' }, 'no step results in the tries'))
}

// ---------------------------------------------------------------- start

// What the current view shows of the run list: it is redrawn only when that changes.
function viewSig() {
  const cur = route()
  const run = app.runs.find((r) => r.name === cur.run)
  const inv = cur.inv || (run && run.invocation)
  return JSON.stringify([cur, app.runs.filter((r) => r === run || (inv && r.invocation === inv)), app.progress[inv] || null])
}

async function refresh() {
  const before = viewSig()
  await loadRuns()
  renderPicker()
  // A running invocation's summary and a run's status follow the files; a log keeps tailing.
  if (viewSig() !== before && (route().inv || route().tab !== 'logs')) await renderView()
}

async function start() {
  document.getElementById('source').textContent = src.live ? 'live' : `report generated ${window.PATCHBAY_REPORT.generated_at || ''}`
  await loadRuns()
  renderPicker()
  await renderView()
  window.__patchbayFirstRender = performance.now()
  document.body.setAttribute('data-ready', '1')
  window.addEventListener('hashchange', async () => { renderPicker(); await renderView() })
  let pending = null
  src.subscribeRuns(() => { clearTimeout(pending); pending = setTimeout(refresh, 150) })
}

start()
