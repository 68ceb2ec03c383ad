// patchbay results server: the runs pushed to it, by project, branch and PR, newest first.
// `/runs#PATH` (the path a push answered with) opens that run; `#/inv/PATH` and
// `#/run/PATH` (patchbay-serve's later links) too. Plain JS, no build step; every text
// from a run goes in as text, and a link only when it is http(s).
'use strict'

const enc = encodeURIComponent

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else el.setAttribute(k, v)
  }
  for (const kid of kids.flat(Infinity)) if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid))
  return el
}

async function getJSON(url) {
  try {
    const res = await fetch(url)
    return res.ok ? await res.json() : null
  } catch { return null }
}

const app = { data: null, open: new Set(), details: {}, sig: null }

function target() {
  let t = location.hash.slice(1)
  try { t = decodeURIComponent(t) } catch { /* as it is */ }
  return t.replace(/^\/(inv|run)\//, '')
}
// The stored run a hash names (a lab's path below it names it too).
const runOf = (t, runs) => runs.find((r) => t === r.path || t.startsWith(r.path + '/'))

const httpUrl = (u) => (typeof u === 'string' && /^https?:\/\//.test(u) ? u : null)
const short = (c) => (c ? String(c).slice(0, 7) : '')
const badge = (text, cls) => h('span', { class: `badge st-${cls || text}` }, text)
function bytes(n) {
  if (n == null) return '—'
  const u = ['B', 'kB', 'MB', 'GB', 'TB']
  let i = 0
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++ }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`
}
const when = (iso) => (iso ? iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '')

function summaryText(r) {
  const s = r.summary || {}
  if (r.kind === 'sims') return `${s.sims} sim${s.sims === 1 ? '' : 's'}: ${s.passed} ok` + (s.failed ? `, ${s.failed} failed` : '') + (s.tries > 1 ? ` (${s.tries} tries)` : '')
  if (r.kind === 'labs') return `${s.labs} lab${s.labs === 1 ? '' : 's'}: ${s.passed} passed` + (s.failed ? `, ${s.failed} failed` : '') + (s.running ? `, ${s.running} running` : '')
  return 'no sims or labs in it'
}

function compareCell(r) {
  const c = r.comparison
  if (!c) return h('span', { class: 'muted' }, r.kind === 'empty' ? '' : 'no base run to compare with')
  const base = h('span', { class: 'muted' }, `vs ${c.base_branch || 'base'} ${short(c.base_commit)} `)
  const parts = []
  if (c.crossed && c.crossed.length) parts.push(h('span', { class: 'cmp-crossed' }, `${c.crossed.length} threshold${c.crossed.length === 1 ? '' : 's'} crossed`))
  if (c.newly_failed && c.newly_failed.length) parts.push(h('span', { class: 'cmp-worse' }, `${c.newly_failed.length} newly failing`))
  if (c.worse) parts.push(h('span', { class: 'cmp-worse' }, `${c.worse} worse`))
  if (c.better) parts.push(h('span', { class: 'cmp-better' }, `${c.better} better`))
  if (!parts.length) parts.push(h('span', { class: 'muted' }, 'no change'))
  return h('span', { class: 'cmp-cell' }, base, parts.map((p, i) => [i ? ', ' : '', p]))
}

// project -> [{key, label, runs}] in the order of their newest run.
function grouped(runs) {
  const projects = new Map()
  for (const r of runs) {
    if (!projects.has(r.project)) projects.set(r.project, new Map())
    const groups = projects.get(r.project)
    const key = r.pr != null ? `pr:${r.pr}` : `branch:${r.branch || ''}`
    if (!groups.has(key)) groups.set(key, { key, pr: r.pr, branch: r.branch, pr_url: r.pr_url, title: r.title, runs: [] })
    groups.get(key).runs.push(r)
  }
  return projects
}

function groupHead(g) {
  const url = httpUrl(g.pr_url)
  if (g.pr != null) {
    return h('h3', { class: 'group-name' }, url ? h('a', { href: url, rel: 'noopener noreferrer' }, `PR #${g.pr}`) : `PR #${g.pr}`,
      g.branch ? h('span', { class: 'muted' }, ` ${g.branch}`) : null, g.title ? h('span', { class: 'group-title' }, ` ${g.title}`) : null)
  }
  return h('h3', { class: 'group-name' }, g.branch ? `branch ${g.branch}` : h('span', { class: 'muted' }, 'no branch given'))
}

function runRow(r) {
  const t = runOf(target(), [r])
  return h('tr', { class: 'run' + (t ? ' target' : ''), id: r.path, 'data-path': r.path, onclick: (e) => { if (e.target.tagName !== 'A') toggle(r.path) } },
    h('td', {}, badge(r.status, r.status === 'done' ? 'stopped' : r.status)),
    h('td', { class: 'when' }, when(r.received_at)),
    h('td', {}, h('code', {}, short(r.commit))),
    h('td', { class: 'title' }, r.pr != null ? (r.title || '') : (r.title || '')),
    h('td', { class: 'what' }, summaryText(r)),
    h('td', {}, compareCell(r)),
    h('td', { class: 'actions' }, h('a', { href: `runs/${r.path}/`, class: 'open' }, 'open'), ' ',
      h('a', { href: `#${r.path}`, class: 'link', title: 'link to this run' }, '#')))
}

function render() {
  const main = document.getElementById('results')
  const d = app.data
  if (!d) { main.replaceChildren(h('div', { class: 'empty' }, 'the server did not answer')); return }
  const head = h('div', { class: 'results-head' },
    h('h1', {}, 'patchbay runs'),
    h('span', { class: 'muted' }, `${d.total} run${d.total === 1 ? '' : 's'}, ${bytes(d.size)}` +
      (d.retention ? ` of ${bytes(d.retention)} kept` : '') + (d.accepts_push ? '' : ' (read only)')))
  if (!d.runs.length) {
    main.replaceChildren(head, h('div', { class: 'empty' }, 'no runs yet: push one (POST /api/push/PROJECT, or sim.push URL --project PROJECT)'))
    return
  }
  const sections = []
  for (const [project, groups] of grouped(d.runs)) {
    sections.push(h('section', { class: 'project', 'data-project': project }, h('h2', {}, project),
      [...groups.values()].map((g) => h('div', { class: 'group', 'data-group': g.key }, groupHead(g),
        h('table', { class: 'runs' }, h('tbody', {}, g.runs.map((r) => [runRow(r), app.open.has(r.path) ? detailRow(r.path) : null])))))))
  }
  const more = d.total > d.runs.length ? h('div', { class: 'note' }, `the newest ${d.runs.length} of ${d.total} runs are shown`) : null
  main.replaceChildren(head, more, ...sections)
}

function detailRow(path) {
  const box = h('td', { colspan: 7 }, h('div', { class: 'empty' }, 'loading…'))
  const row = h('tr', { class: 'details', 'data-details': path }, box)
  const d = app.details[path]
  if (d) box.replaceChildren(details(d))
  else getJSON(`api/results/${path.split('/').map(enc).join('/')}`).then((data) => {
    if (!data) { box.replaceChildren(h('div', { class: 'empty' }, 'this run is not there any more')); return }
    app.details[path] = data
    box.replaceChildren(details(data))
  })
  return row
}

const METRICS = { pass_rate: ['pass rate %', 1], runtime_s: ['runtime s', 3], duration_s: ['duration s', 3], down_mbit_s: ['down Mbit/s', 1],
  up_mbit_s: ['up Mbit/s', 1], latency_ms: ['latency ms', 2], down_bytes: ['down bytes', 0], up_bytes: ['up bytes', 0] }
const meta = (m) => METRICS[m] || [m, 3]
const val = (m, st) => (st == null ? '—' : st.median.toFixed(meta(m)[1]))

function details(d) {
  const url = httpUrl(d.pr_url)
  const facts = h('div', { class: 'facts' },
    [['project', d.project], ['branch', d.branch], ['commit', d.commit], ['created', d.created_at], ['received', when(d.received_at)], ['size', `${bytes(d.size)} in ${d.files} files`]]
      .filter(([, v]) => v).map(([k, v]) => h('span', {}, h('b', {}, k + ' '), v)),
    d.pr != null ? h('span', {}, h('b', {}, 'PR '), url ? h('a', { href: url, rel: 'noopener noreferrer' }, `#${d.pr}`) : `#${d.pr}`) : null)
  const failed = (d.summary || {}).failed_names || []
  const out = [facts, h('div', { class: 'open-line' }, h('a', { href: `runs/${d.path}/`, class: 'open' }, 'open in the viewer'), ' ', h('span', { class: 'muted' }, summaryText(d)))]
  if (d.note) out.push(h('div', { class: 'note' }, d.note))
  if (failed.length) out.push(h('div', { class: 'error-banner' }, `failed: ${failed.join(', ')}`))
  const c = d.comparison
  if (!c) { out.push(h('div', { class: 'muted cmp-none' }, 'not compared: no earlier run of the base branch (main or master, or run.json\'s base_branch) of this project')); return h('div', {}, out) }
  out.push(h('h4', {}, 'compared with ', h('a', { href: `#${c.base}`, class: 'base-link' }, `${c.base_branch || 'base'} ${short(c.base_commit)}`), h('span', { class: 'muted' }, ` (${c.base})`)))
  for (const x of c.crossed || []) out.push(h('div', { class: 'error-banner crossed' }, x))
  if (c.kind === 'labs') {
    const rows = c.rows.filter((r) => r.class || r.base !== r.head)
    out.push(rows.length ? h('table', { class: 'compare' }, h('thead', {}, h('tr', {}, ['Lab', 'Base', 'Head'].map((t) => h('th', {}, t)))),
      h('tbody', {}, rows.map((r) => h('tr', { class: r.class, 'data-lab': r.lab }, h('td', {}, r.lab), h('td', {}, r.base || '—'), h('td', { class: 'pct' }, r.head || '—')))))
      : h('div', { class: 'muted' }, `the same ${c.rows.length} labs, each as it was`))
    return h('div', {}, out)
  }
  const rows = []
  for (const sim of c.sims) {
    if (sim.in !== 'both') continue
    const worse = sim.head.failures > sim.base.failures
    rows.push(h('tr', { class: 'cmp-sim' + (worse ? ' worse crossed' : ''), 'data-sim': sim.sim, 'data-metric': 'status' }, h('td', {}, sim.sim), h('td', {}), h('td', {}, 'status'),
      h('td', {}, badge(sim.base.status, sim.base.failures ? 'error' : 'ok')), h('td', {}, badge(sim.head.status, sim.head.failures ? 'error' : 'ok')), h('td', {}), h('td', { class: 'pct' }, worse ? 'fails now' : '')))
    for (const r of sim.rows) {
      if (r.metric === 'pass_rate' && sim.base.tries === 1 && sim.head.tries === 1) continue
      const [label, digits] = meta(r.metric)
      const pct = r.change_pct
      rows.push(h('tr', { class: [r.class, r.crossed ? 'crossed' : ''].filter(Boolean).join(' '), 'data-sim': sim.sim, 'data-step': r.step || '', 'data-metric': r.metric, title: r.crossed ? `crosses ${r.crossed}` : null },
        h('td', {}, sim.sim), h('td', {}, r.step || ''), h('td', {}, label),
        h('td', { class: 'num' }, val(r.metric, r.base)), h('td', { class: 'num' }, val(r.metric, r.head)),
        h('td', { class: 'num' }, r.change == null ? '—' : (r.change >= 0 ? '+' : '') + r.change.toFixed(digits)),
        h('td', { class: 'num pct' }, r.base && r.head ? (pct == null ? 'n/a' : `${pct >= 0 ? '+' : ''}${pct.toFixed(1)}%`) : '—')))
    }
  }
  out.push(rows.length ? h('table', { class: 'compare' }, h('thead', {}, h('tr', {}, ['Sim', 'Step', 'Metric', 'Base', 'Head', 'Change', '%'].map((t) => h('th', {}, t)))), h('tbody', {}, rows))
    : h('div', { class: 'muted' }, 'no sim ran on both sides'))
  for (const side of ['base', 'head']) if ((c[`only_in_${side}`] || []).length) out.push(h('div', { class: 'note' }, `only in ${side}: ${c[`only_in_${side}`].join(', ')}`))
  return h('div', {}, out)
}

function toggle(path) {
  if (app.open.has(path)) app.open.delete(path)
  else app.open.add(path)
  render()
}

function showTarget(scroll) {
  const t = target()
  if (!t || !app.data) return
  const r = runOf(t, app.data.runs)
  if (!r) return
  app.open.add(r.path)
  render()
  const el = document.getElementById(r.path)
  if (el && scroll) el.scrollIntoView({ block: 'center' })
}

async function load() {
  const data = await getJSON('api/results')
  const sig = JSON.stringify(data)
  if (sig === app.sig) return false
  app.sig = sig
  app.data = data
  return true
}

async function start() {
  await load()
  render()
  showTarget(true)
  document.body.setAttribute('data-ready', '1')
  window.addEventListener('hashchange', () => { render(); showTarget(true) })
  setInterval(async () => { if (document.visibilityState === 'visible' && await load()) render() }, 15000)
}

start()
