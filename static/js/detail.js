/* DwellFi file page: live status, the actions (process again, delete), the chart. */
(function () {
  'use strict';

  var D = window.DwellFi;
  var FINAL = { processed: true, failed: true };
  var RELOAD_DELAY = 800; // lets the notification that follows an outcome arrive first
  var SVG = 'http://www.w3.org/2000/svg';

  var article, file, apiUrl, homeUrl;
  var reloading = false;
  var gone = false;

  // --- live status ---------------------------------------------------------------

  function role(name) {
    return article.querySelector('[data-role="' + name + '"]');
  }

  function statusMessage(resource, message) {
    if (resource.status === 'processing') return D.percent(resource.progress) + '% done';
    if (resource.status === 'queued') return 'Waiting for a worker';
    return message || '';
  }

  function renderStatus(resource, message) {
    article.dataset.status = resource.status;
    if (resource.last_event_id !== null && resource.last_event_id !== undefined) {
      article.dataset.lastEventId = String(resource.last_event_id);
    }
    var badge = role('status');
    badge.className = 'badge badge--' + resource.status;
    badge.textContent = resource.status;

    var progress = role('progress');
    var fraction = resource.status === 'processed' ? 1 : Math.min(Math.max(Number(resource.progress) || 0, 0), 1);
    progress.value = fraction;
    progress.textContent = D.percent(fraction) + '%';

    role('status-message').textContent = statusMessage(resource, message);
    if (resource.attempts !== undefined) role('attempts').textContent = String(resource.attempts);
    article.classList.toggle('is-stale', !FINAL[resource.status]);
  }

  function isStale(resource) {
    var shown = article.dataset.lastEventId;
    return shown !== '' && shown !== undefined && resource.last_event_id !== null &&
      resource.last_event_id !== undefined && Number(resource.last_event_id) < Number(shown);
  }

  function reloadOnce() {
    if (reloading) return;
    reloading = true;
    role('status-message').textContent = 'Loading the results…';
    window.setTimeout(D.reloadKeepingToasts, RELOAD_DELAY);
  }

  function fileGone() {
    if (gone) return;
    gone = true;
    article.querySelectorAll('.actions button').forEach(function (b) { b.disabled = true; });
    D.toast({ title: 'File deleted', description: file.name + ' no longer exists. Back to your files…', kind: 'warning' });
    window.setTimeout(function () { window.location.assign(homeUrl); }, 1500);
  }

  function onMessage(message) {
    if (message.type === 'snapshot') {
      (message.files || []).forEach(function (f) {
        if (f.id === file.id && !isStale(f)) renderStatus(f);
      });
      return;
    }
    if (Number(message.file_id) !== file.id) return;
    if (message.type === 'file.deleted') {
      fileGone();
      return;
    }
    if (!message.file || typeof message.file !== 'object') return;
    var resource = Object.assign({}, message.file);
    if (message.status) resource.status = message.status;
    if (typeof message.progress === 'number') resource.progress = message.progress;
    if (isStale(resource)) return;
    renderStatus(resource, message.status_message);
    // A durable event with a final status is an outcome this page has not shown.
    if (message.id !== undefined && message.id !== null && FINAL[resource.status]) reloadOnce();
  }

  // --- actions ---------------------------------------------------------------------

  function setBusy(button, busy, label) {
    button.disabled = busy;
    button.setAttribute('aria-busy', busy ? 'true' : 'false');
    if (label) button.textContent = label;
  }

  function reprocess(event) {
    var button = event.currentTarget;
    var label = button.textContent;
    setBusy(button, true, 'Queuing…');
    D.api('POST', apiUrl + 'reprocess/').then(function (result) {
      setBusy(button, false, label);
      if (!result.ok) {
        D.toast({ title: 'Could not process again', description: D.errorMessage(result.status, result.text), kind: 'error' });
        return;
      }
      var resource = result.data && result.data.id === file.id ? result.data
        : Object.assign({}, file, { status: 'queued', progress: 0, last_event_id: null });
      if (!isStale(resource)) renderStatus(resource);
      D.toast({ title: 'Queued again', description: file.name + ' will be processed again; this page updates when it is done.' });
    });
  }

  function remove(event) {
    var button = event.currentTarget;
    if (!window.confirm('Delete \u201c' + file.name + '\u201d? Its results and stored bytes are removed too. This cannot be undone.')) {
      return;
    }
    var label = button.textContent;
    setBusy(button, true, 'Deleting…');
    D.api('DELETE', apiUrl).then(function (result) {
      if (result.ok || result.status === 404) {
        gone = true;
        window.location.assign(homeUrl);
        return;
      }
      setBusy(button, false, label);
      D.toast({ title: 'Could not delete', description: D.errorMessage(result.status, result.text), kind: 'error' });
    });
  }

  // --- chart -----------------------------------------------------------------------

  function svg(tag, attrs, parent) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, attrs[key]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceTicks(lo, hi, count) {
    var span = hi - lo || Math.abs(hi) || 1;
    var step = Math.pow(10, Math.floor(Math.log10(span / count)));
    var err = span / count / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var ticks = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  function shortNumber(v) {
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1).replace(/\.0$/, '') + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, '') + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(1).replace(/\.0$/, '') + 'k';
    return String(Number(v.toPrecision(4)));
  }

  function utcLabel(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return '';
    return d.toISOString().slice(5, 16).replace('T', ' ');
  }

  function message(canvas, text) {
    canvas.textContent = '';
    canvas.appendChild(Object.assign(document.createElement('p'), { className: 'muted', textContent: text }));
  }

  function drawChart(canvas, data) {
    var series = (data.series || []).filter(function (b) { return b.mean !== null && b.mean !== undefined; });
    if (!series.length) {
      message(canvas, 'No values for ' + data.metric + ' in this file.');
      return;
    }
    var width = Math.max(300, canvas.clientWidth || 600);
    var height = width < 500 ? 220 : 280;
    var m = { top: 12, right: 14, bottom: 30, left: 48 };
    var innerW = width - m.left - m.right;
    var innerH = height - m.top - m.bottom;

    var lo = Infinity, hi = -Infinity;
    series.forEach(function (b) { lo = Math.min(lo, b.min); hi = Math.max(hi, b.max); });
    var rule = data.rule;
    if (rule) { lo = Math.min(lo, rule.min); hi = Math.max(hi, rule.max); }
    if (lo === hi) { lo -= 1; hi += 1; }
    var pad = (hi - lo) * 0.05;
    lo -= pad; hi += pad;

    var n = series.length;
    function x(i) { return m.left + (n === 1 ? innerW / 2 : (i / (n - 1)) * innerW); }
    function y(v) { return m.top + innerH - ((v - lo) / (hi - lo)) * innerH; }

    var root = svg('svg', {
      viewBox: '0 0 ' + width + ' ' + height, width: width, height: height, role: 'img',
      'aria-label': data.metric + ' over ' + data.record_count + ' records' +
        (rule ? '; allowed range ' + rule.min + ' to ' + rule.max : '')
    });
    svg('title', {}, root).textContent = data.metric + (data.server ? ' on ' + data.server : '');

    var grid = svg('g', { 'class': 'grid' }, root);
    niceTicks(lo, hi, 5).forEach(function (t) {
      svg('line', { x1: m.left, x2: width - m.right, y1: y(t), y2: y(t) }, grid);
      var label = svg('text', { x: m.left - 6, y: y(t) + 4, 'text-anchor': 'end' }, grid);
      label.textContent = shortNumber(t);
    });
    var marks = n === 1 ? [0] : [0, Math.floor((n - 1) / 2), n - 1];
    marks.forEach(function (i, k) {
      var anchor = n === 1 ? 'middle' : k === 0 ? 'start' : k === marks.length - 1 ? 'end' : 'middle';
      var label = svg('text', { x: x(i), y: height - 8, 'text-anchor': anchor }, grid);
      label.textContent = utcLabel(series[i].start) + ' UTC';
    });

    var upper = series.map(function (b, i) { return x(i) + ',' + y(b.max); });
    var lower = series.map(function (b, i) { return x(i) + ',' + y(b.min); }).reverse();
    if (n > 1) svg('polygon', { 'class': 'band', points: upper.concat(lower).join(' ') }, root);

    if (rule) {
      [rule.min, rule.max].forEach(function (v) {
        if (v > lo && v < hi) svg('line', { 'class': 'rule', x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }, root);
      });
    }
    if (n > 1) {
      svg('polyline', { 'class': 'mean', points: series.map(function (b, i) { return x(i) + ',' + y(b.mean); }).join(' ') }, root);
    }
    series.forEach(function (b, i) {
      var out = rule && (b.max > rule.max || b.min < rule.min);
      if (n === 1 || out) {
        var v = !out ? b.mean : b.max > rule.max ? b.max : b.min;
        var dot = svg('circle', { 'class': out ? 'outlier' : 'mean-dot', cx: x(i), cy: y(v), r: n > 200 ? 2 : 3.5 }, root);
        svg('title', {}, dot).textContent = utcLabel(b.start) + ' UTC: ' + v;
      }
    });

    canvas.textContent = '';
    canvas.appendChild(root);
  }

  function setupChart() {
    var canvas = document.getElementById('chart-canvas');
    var metricSelect = document.getElementById('chart-metric');
    if (!canvas || !metricSelect) return;
    var serverSelect = document.getElementById('chart-server');
    var last = null;
    var request = 0;

    function load() {
      var points = Math.max(20, Math.min(500, Math.floor((canvas.clientWidth || 600) / 3)));
      var query = '?metric=' + encodeURIComponent(metricSelect.value) + '&points=' + points;
      if (serverSelect && serverSelect.value) query += '&server=' + encodeURIComponent(serverSelect.value);
      var mine = ++request;
      canvas.setAttribute('aria-busy', 'true');
      D.api('GET', apiUrl + 'metrics/' + query).then(function (result) {
        if (mine !== request) return;
        canvas.setAttribute('aria-busy', 'false');
        if (!result.ok || !result.data) {
          message(canvas, 'Could not load the chart: ' + D.errorMessage(result.status, result.text));
          return;
        }
        last = result.data;
        drawChart(canvas, last);
      });
    }

    metricSelect.addEventListener('change', load);
    if (serverSelect) serverSelect.addEventListener('change', load);
    var resizeTimer = null;
    window.addEventListener('resize', function () {
      window.clearTimeout(resizeTimer);
      resizeTimer = window.setTimeout(function () { if (last) drawChart(canvas, last); }, 150);
    });
    load();
  }

  function start() {
    file = D.readJSON('file-data', null);
    if (!file) return;
    article = document.getElementById('file-' + file.id);
    if (!article) return;
    apiUrl = article.dataset.apiUrl;
    homeUrl = article.dataset.homeUrl || '/';
    article.classList.toggle('is-stale', !FINAL[file.status]);

    document.getElementById('reprocess').addEventListener('click', reprocess);
    document.getElementById('delete').addEventListener('click', remove);
    D.onFileEvent(onMessage);
    setupChart();
  }

  start();
})();
