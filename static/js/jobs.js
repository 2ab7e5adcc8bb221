// Jobs dashboard (GET /admin/jobs) and job page (GET /admin/jobs/{id}, DELETE /job/{id}).
// Both poll while shown. Rows are keyed and updated in place, so a focused link or button keeps
// its focus across refreshes.
import { api } from './api.js';
import { summary as chartSummary, throughputChart } from './chart.js';
import { $, alertBox, badge, confirmAction, durationText, flashNext, formatBytes, formatCount, h, secondsText, setContent, setText, shortUrl, timeEl } from './dom.js';

/** How often the screens refresh while shown. */
const POLL_MS = 1500;

/** A refresh loop that never overlaps itself and stops for good when the screen is left. */
function poller(tick) {
  let timer = null;
  let generation = 0;
  return {
    start() {
      // A restart (after a cancel, say) replaces the loop: its pending timer must not fire a tick.
      clearTimeout(timer);
      const mine = ++generation;
      const run = async () => {
        if (mine !== generation) return;
        const again = await tick();
        if (mine === generation && again !== false) timer = setTimeout(run, POLL_MS);
      };
      run();
    },
    stop() {
      generation += 1;
      clearTimeout(timer);
    },
  };
}

/** The provider as people call it: its display name, else its URL. */
const providerText = (job) => job.provider_name || job.provider_aud || '(registration removed)';

/** "about 3 min 20 s left", from seconds. */
const etaText = (secs) => `about ${secondsText(Math.ceil(secs))} left`;

const finished = (job) => ['completed', 'completed-with-errors', 'failed', 'cancelled'].includes(job.state);
const percentText = (job) => `${Number(job.progress_percent).toFixed(job.progress_percent % 1 ? 1 : 0)} %`;

function progressCell(job, label) {
  return h(
    'span',
    { class: 'progress-cell' },
    h('progress', { max: 100, value: job.progress_percent, 'aria-label': label }),
    h('span', {}, percentText(job)),
  );
}

/** What went wrong in a finished job, in words; empty for a clean one. */
function errorsText(job) {
  const parts = [];
  if (job.files_failed) parts.push(`${job.files_failed} file(s) failed`);
  if (job.provider_errors) parts.push(`${job.provider_errors} error(s) reported by the provider`);
  return parts.join('; ');
}

function filesText(job) {
  const failed = job.files_failed ? `, ${job.files_failed} failed` : '';
  return `${job.files_finished} / ${job.files_total}${failed}`;
}

// ---- Dashboard -------------------------------------------------------------------------------

const COLUMNS = ['Job', 'Provider', 'Type', 'State', 'Progress', 'Files', 'Bytes', 'Resources', 'Started', 'Finished', 'Errors'];

function jobCells(job) {
  const short = job.id.slice(0, 8);
  return [
    [h('a', { href: `#/jobs/${job.id}`, class: 'job-link', 'aria-label': `Job ${job.id}` }, h('code', {}, `${short}…`))],
    [providerText(job), h('span', { class: 'sub' }, job.provider_name ? job.provider_aud : job.client_id)],
    [job.export_type],
    [badge(job.state), job.status_text && !finished(job) ? h('span', { class: 'sub' }, job.status_text) : null],
    [progressCell(job, `Progress of job ${short}`)],
    [filesText(job)],
    [formatBytes(job.bytes)],
    [formatCount(job.resources)],
    [timeEl(job.created_at)],
    [timeEl(job.finished_at)],
    [job.failure ? h('span', { class: 'error-text' }, job.failure) : errorsText(job) ? h('span', { class: 'warn-text' }, errorsText(job)) : ''],
  ];
}

const NUMERIC = new Set(['Files', 'Bytes', 'Resources']);

function renderJobs(jobs) {
  const body = $('jobs-table').tBodies[0];
  const existing = new Map([...body.rows].map((tr) => [tr.dataset.jobId, tr]));
  let previous = null;
  for (const job of jobs) {
    let tr = existing.get(job.id);
    existing.delete(job.id);
    if (!tr) {
      tr = h('tr', { 'data-job-id': job.id }, COLUMNS.map((c) => h('td', { 'data-label': c, class: NUMERIC.has(c) ? 'num' : null })));
    }
    jobCells(job).forEach((content, i) => setContent(tr.cells[i], ...content));
    tr.dataset.state = job.state;
    // Move a row only when it is out of place: moving a node drops the focus inside it.
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (tr !== expected) body.insertBefore(tr, expected);
    previous = tr;
  }
  for (const gone of existing.values()) gone.remove();
  $('jobs-empty').hidden = jobs.length > 0;
  $('jobs-table').hidden = jobs.length === 0;
}

const dashboardPoller = poller(async () => {
  try {
    const { jobs } = await api('/admin/jobs', { admin: true });
    alertBox($('jobs-error'), '');
    renderJobs(jobs);
    setText($('jobs-updated'), `Updated ${new Date().toLocaleTimeString()}.`);
    return true;
  } catch (e) {
    if (e.handled) return false;
    alertBox($('jobs-error'), `The jobs could not be loaded: ${e.message}. Retrying…`);
    return true;
  }
});

export const dashboard = {
  section: 'screen-jobs',
  nav: 'jobs',
  title: 'Import jobs',
  admin: true,
  enter: () => dashboardPoller.start(),
  leave: () => dashboardPoller.stop(),
};

// ---- Job page --------------------------------------------------------------------------------

let jobId = null;
let lastJob = null;
let finishedPolls = 0;
/** The page of the file list shown: a job may have 50,000 files, so a poll brings one page. */
const FILES_PAGE = 100;
let filesOffset = 0;

const FILE_COLUMNS = ['#', 'Resource type', 'Name', 'URL', 'State', 'Resources', 'Bytes', 'Outcome'];

/** "1,234 of 2,000" where the manifest gave a count. */
const ofExpected = (n, expected) => (expected === null || expected === undefined
  ? formatCount(n) : `${formatCount(n)} of ${formatCount(expected)}`);
const FILE_CELL_CLASS = { Name: 'wrap', URL: 'wrap', Resources: 'num', Bytes: 'num', Outcome: 'wrap' };

/** Outcome text without the file's URL spelled out again (the URL and type columns have it). */
function outcomeText(f) {
  let text = f.diagnostics;
  for (const u of [f.url, f.url.split('?')[0]]) {
    const named = f.resource_type ? `${u} (${f.resource_type})` : u;
    for (const lead of [`file ${named}: `, `file ${named} `]) text = text.split(lead).join('');
    text = text.split(u).join('this file');
  }
  return text;
}

function fileCells(f) {
  const urlId = `job-file-url-${f.index}`;
  return [
    [String(f.index + 1), f.kind !== 'output' ? h('span', { class: 'sub' }, f.kind) : null],
    [f.resource_type],
    [h('code', {}, f.name)],
    [h('span', { title: f.url }, shortUrl(f.url)), h('span', { id: urlId, hidden: true }, f.url),
      h('button', { type: 'button', class: 'small link-copy', 'data-copy': urlId, 'aria-label': `Copy the URL of file ${f.index + 1}` }, 'Copy')],
    [badge(f.state)],
    [ofExpected(f.resources, f.expected_resources)],
    [formatBytes(f.bytes)],
    [f.diagnostics ? h('span', { class: f.state === 'failed' ? 'error-text' : null }, outcomeText(f)) : ''],
  ];
}

/** "1.2 MiB, 3,000 resources, 2.1 MiB/s": the rate only where the server running the job measured it. */
function receivedText(live) {
  const rate = live.bytes_per_sec === null || live.bytes_per_sec === undefined ? '' : `, ${formatBytes(live.bytes_per_sec)}/s`;
  return `${formatBytes(live.bytes)}, ${formatCount(live.resources)} resources${rate}`;
}

function summaryPairs(job) {
  return [
    ['State', [badge(job.state), job.status_text && !finished(job) ? ` ${job.status_text}` : null]],
    ['Provider', [providerText(job), job.provider_name ? h('span', { class: 'sub' }, job.provider_aud) : null,
      h('span', { class: 'sub' }, `client_id ${job.client_id}`)]],
    ['Export', [job.export_type, ' ', h('code', {}, job.export_url)]],
    ['Files', [filesText(job)]],
    ['Resources', [ofExpected(job.resources, job.expected_resources),
      job.expected_resources !== null && job.expected_resources !== undefined ? h('span', { class: 'sub' }, 'files done, of what the manifests announced') : null]],
    ['Bytes', [formatBytes(job.bytes)]],
    ...(job.live ? [['Received so far', [receivedText(job.live),
      h('span', { class: 'sub' }, `files still downloading included (${job.live.downloading} now)`),
      job.live.as_of ? h('span', { class: 'sub' }, 'as the server running it last reported, ', timeEl(job.live.as_of)) : null]]] : []),
    ...(job.live && job.live.eta_secs !== null && job.live.eta_secs !== undefined
      ? [['Time left', [etaText(job.live.eta_secs), h('span', { class: 'sub' }, 'at the rate so far, from the counts the manifests announced')]]] : []),
    ['Started', [timeEl(job.created_at)]],
    ['Finished', [job.finished_at ? timeEl(job.finished_at) : 'not yet',
      job.finished_at ? h('span', { class: 'sub' }, `took ${durationText(job.created_at, job.finished_at)}`) : null]],
    ...(job.kept_until ? [['Kept until', [timeEl(job.kept_until), h('span', { class: 'sub' }, 'then the job and its files are deleted (JOBS_MAX_AGE)')]]] : []),
    ...(job.failure ? [['Failure', [h('span', { class: 'error-text' }, job.failure)]]] : []),
  ];
}

function renderJob(job) {
  lastJob = job;
  $('job-body').hidden = false;
  $('job-progress').value = job.progress_percent;
  setText($('job-progress-label'), `${percentText(job)} done`);
  setContent($('job-summary'), summaryPairs(job).map(([k, v]) => [h('dt', {}, k), h('dd', {}, ...v)]));
  setText($('job-delete'), finished(job) ? 'Delete job and its files' : 'Cancel import and delete');
  $('job-cancel').hidden = finished(job);
  // A job that failed or was cancelled before its manifest listed no file for its own reason.
  setText($('job-files-empty'), finished(job)
    ? `No files: the job ${job.state} before the provider's export listed any.`
    : "No files yet: the provider's export has not listed any.");

  renderSubmission(job.submission);
  renderChart(job.throughput || []);
  renderTypes(job.types || []);

  const body = $('job-files').tBodies[0];
  const rows = new Map([...body.rows].map((tr) => [tr.dataset.index, tr]));
  let previous = null;
  for (const f of job.files) {
    let tr = rows.get(String(f.index));
    rows.delete(String(f.index));
    if (!tr) {
      tr = h('tr', { 'data-index': f.index }, FILE_COLUMNS.map((c) => h('td', { 'data-label': c, class: FILE_CELL_CLASS[c] })));
    }
    fileCells(f).forEach((content, i) => setContent(tr.cells[i], ...content));
    tr.dataset.state = f.state;
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (tr !== expected) body.insertBefore(tr, expected);
    previous = tr;
  }
  // Rows of another page go.
  for (const gone of rows.values()) gone.remove();
  const total = job.files_page ? job.files_page.total : job.files.length;
  $('job-files-empty').hidden = total > 0;
  $('job-files').hidden = total === 0;
  renderPager(total, job.files.length);
}

function renderPager(total, shown) {
  $('job-files-pager').hidden = total <= FILES_PAGE;
  const first = shown ? filesOffset + 1 : 0;
  setText($('job-files-range'), `Files ${formatCount(first)}–${formatCount(filesOffset + shown)} of ${formatCount(total)}`);
  $('job-files-prev').disabled = filesOffset === 0;
  $('job-files-next').disabled = filesOffset + FILES_PAGE >= total;
}

/** A submission's job: who submitted it, its status, and each manifest it named. */
function renderSubmission(s) {
  $('job-submission').hidden = !s;
  if (!s) return;
  const submitter = s.submitter.system ? `${s.submitter.value} (${s.submitter.system})` : s.submitter.value;
  setContent($('job-submission-summary'), [
    ['Submission', [h('code', {}, s.submission_id)]],
    ['Submitter', [submitter]],
    ['Status', [badge(s.status), h('span', { class: 'sub' }, `as the provider said; ${s.files_finished} of ${s.files_total} files done`)]],
  ].map(([k, v]) => [h('dt', {}, k), h('dd', {}, ...v)]));
  const rows = s.manifests.map((m) => {
    const what = m.manifest_url ? h('code', {}, m.manifest_url) : h('span', { class: 'muted' }, 'withdrawal');
    const replaces = m.replaces ? h('span', { class: 'sub' }, 'replaces ', h('code', {}, m.replaces)) : null;
    const failure = m.failure ? h('span', { class: 'sub error-text' }, m.failure) : null;
    return h(
      'tr',
      { 'data-seq': m.seq, 'data-state': m.state },
      h('td', { 'data-label': '#' }, String(m.seq + 1)),
      h('td', { 'data-label': 'Manifest', class: 'wrap' }, what, replaces, failure),
      h('td', { 'data-label': 'State' }, badge(m.state)),
      h('td', { 'data-label': 'Files', class: 'num' }, formatCount(m.files)),
      h('td', { 'data-label': 'Imported', class: 'num' }, formatCount(m.imported)),
      h('td', { 'data-label': 'Failed', class: 'num' }, formatCount(m.failed)),
    );
  });
  setContent($('job-manifests').tBodies[0], rows);
}

function renderChart(points) {
  const svg = throughputChart(points);
  $('job-chart-figure').hidden = !svg;
  if (svg) $('job-chart').replaceChildren(svg);
  setText($('job-chart-caption'), svg ? chartSummary(points) : '');
}

function renderTypes(types) {
  const rows = types.map((t) => h(
    'tr',
    { 'data-type': t.resource_type },
    h('td', { 'data-label': 'Resource type' }, t.resource_type),
    h('td', { 'data-label': 'Files done', class: 'num' }, `${t.files_done} / ${t.files}`),
    h('td', { 'data-label': 'Resources', class: 'num' }, formatCount(t.resources)),
    h('td', { 'data-label': 'Announced', class: 'num' },
      t.expected_resources === null || t.expected_resources === undefined ? h('span', { class: 'muted' }, 'not given') : formatCount(t.expected_resources)),
  ));
  setContent($('job-types').tBodies[0], rows);
  $('job-types-empty').hidden = types.length > 0;
  $('job-types').hidden = types.length === 0;
}

const jobPoller = poller(async () => {
  const id = jobId;
  if (!id) return false;
  try {
    const job = await api(`/admin/jobs/${id}?offset=${filesOffset}&limit=${FILES_PAGE}`, { admin: true });
    if (id !== jobId) return false;
    alertBox($('job-error'), '');
    renderJob(job);
    // A finished job no longer changes, but what it kept last (its chart) may land a moment after
    // its final state: one more look, then stop.
    if (!finished(job)) {
      finishedPolls = 0;
      return true;
    }
    finishedPolls += 1;
    return finishedPolls < 2;
  } catch (e) {
    if (e.handled) return false;
    if (e.status === 404) {
      $('job-body').hidden = true;
      alertBox($('job-error'), 'This import job does not exist (any more): it was deleted or removed after its retention time.');
      return false;
    }
    alertBox($('job-error'), `The job could not be loaded: ${e.message}. Retrying…`);
    return true;
  }
});

export const jobPage = {
  section: 'screen-job',
  nav: 'jobs',
  title: 'Import job',
  admin: true,
  enter(id) {
    jobId = id;
    lastJob = null;
    finishedPolls = 0;
    filesOffset = 0;
    $('job-id').textContent = id;
    $('job-body').hidden = true;
    $('job-files').tBodies[0].replaceChildren();
    $('job-types').tBodies[0].replaceChildren();
    $('job-manifests').tBodies[0].replaceChildren();
    $('job-submission').hidden = true;
    $('job-chart').replaceChildren();
    $('job-chart-figure').hidden = true;
    $('job-outcome-link').href = `/job/${id}/import-outcome.ndjson`;
    alertBox($('job-error'), '');
    jobPoller.start();
  },
  leave() {
    jobPoller.stop();
    jobId = null;
  },
};

/** What a cancel or delete does to what the job stored, per destination, as the server says. */
const stopDoes = () => (lastJob && lastJob.a_stop_does) || 'what it stored is removed';

export function wireJobPage() {
  const turnPage = (by) => {
    filesOffset = Math.max(0, filesOffset + by);
    jobPoller.start();
  };
  $('job-files-prev').addEventListener('click', () => turnPage(-FILES_PAGE));
  $('job-files-next').addEventListener('click', () => turnPage(FILES_PAGE));
  // With the admin credential: a Bulk Submit job's outcomes are its submitter's and the operator's.
  $('job-outcome-link').addEventListener('click', async (ev) => {
    ev.preventDefault();
    const id = jobId;
    try {
      const text = await api(`/job/${id}/import-outcome.ndjson`, { admin: true, raw: true });
      const url = URL.createObjectURL(new Blob([text], { type: 'application/fhir+ndjson' }));
      const a = document.createElement('a');
      a.href = url;
      a.download = `import-outcome-${id.slice(0, 8)}.ndjson`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (e) {
      alertBox($('job-error'), `The outcomes could not be downloaded: ${e.message}`);
    }
  });
  $('job-cancel').addEventListener('click', async () => {
    const id = jobId;
    const ok = await confirmAction({
      title: 'Cancel this import?',
      message: `The import stops now: ${stopDoes()}. The job stays listed as cancelled until it expires; the provider would have to ping again.`,
      confirmLabel: 'Cancel import',
    });
    if (!ok || id !== jobId) {
      $('job-cancel').focus();
      return;
    }
    try {
      await api(`/job/${id}/cancel`, { method: 'POST', admin: true });
      jobPoller.start();
    } catch (e) {
      alertBox($('job-error'), `The import was not cancelled: ${e.message}`);
    }
  });
  $('job-delete').addEventListener('click', async () => {
    const id = jobId;
    const running = lastJob && !finished(lastJob);
    const ok = await confirmAction({
      title: running ? 'Cancel this import?' : 'Delete this job?',
      message: running
        ? `The import stops now and the job is deleted: ${stopDoes()}. The provider would have to ping again.`
        : `The job and its outcomes are deleted: ${stopDoes()}.`,
      confirmLabel: running ? 'Cancel import' : 'Delete job',
    });
    if (!ok || id !== jobId) {
      $('job-delete').focus();
      return;
    }
    // Stop polling first: the job is about to disappear.
    jobPoller.stop();
    try {
      await api(`/job/${id}`, { method: 'DELETE', admin: true });
      flashNext(`Import job ${id} was ${running ? 'cancelled and ' : ''}deleted.`);
      location.hash = '#/jobs';
    } catch (e) {
      alertBox($('job-error'), `The job was not deleted: ${e.message}`);
      jobPoller.start();
    }
  });
}
