/* DwellFi file page: live status, the actions (download, process again, replace,
 * delete) and a uPlot chart per metric fed by the downsampling endpoint.
 *
 * What an event changes is the server's to render: an event about this file, or
 * an action's answer, has the page fetched again and its article morphed in
 * (common.js `DwellFi.refresh`) — status, summary, failure, metrics, anomalies and
 * errors — with no reload. A chart still there keeps its drawing and zoom
 * (`hx-morph-skip` on its figure) and loads its data again when the file's content
 * changed; a `file.progress` message moves the status and progress only. */
(function () {
  'use strict';

  var D = window.DwellFi;

  var article, apiUrl, homeUrl;
  var gone = false;

  // --- live status ---------------------------------------------------------------

  function role(name) {
    return article.querySelector('[data-role="' + name + '"]');
  }

  function fileId() {
    return Number(article.dataset.fileId);
  }

  function fileName() {
    return role('name').textContent;
  }

  /** Show the file as the server has it now, unless `lastEventId` is no news. */
  function refresh(lastEventId) {
    if (D.isNewer(article, lastEventId)) D.refresh(article, location.pathname + location.search);
  }

  function fileGone() {
    if (gone) return;
    gone = true;
    article.querySelectorAll('.actions button').forEach(function (b) { b.disabled = true; });
    D.toast({ title: 'File deleted', description: fileName() + ' no longer exists. Back to your files…', kind: 'warning' });
    window.setTimeout(function () { window.location.assign(homeUrl); }, 1500);
  }

  function onMessage(message) {
    if (Number(message.file_id) !== fileId()) return;
    if (message.type === 'file.deleted') {
      fileGone();
      return;
    }
    if (message.type === 'file.progress') {
      // Tiny: no resource, only the fields the status line shows.
      D.showProgress(article, message);
      return;
    }
    if (message.file && typeof message.file === 'object') refresh(message.file.last_event_id);
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
    var name = fileName();
    setBusy(button, true, 'Queuing…');
    D.api('POST', apiUrl + 'reprocess/').then(function (result) {
      setBusy(button, false, label);
      if (!result.ok) {
        D.toast({ title: 'Could not process again', description: D.errorMessage(result.status, result.text), kind: 'error' });
        return;
      }
      refresh(result.data && result.data.last_event_id);
      D.toast({ title: 'Queued again', description: name + ' will be processed again; this page updates when it is done.' });
    });
  }

  function remove(event) {
    var button = event.currentTarget;
    var name = fileName();
    if (!window.confirm('Delete \u201c' + name + '\u201d? Its results and stored bytes are removed too. This cannot be undone.')) {
      return;
    }
    var label = button.textContent;
    setBusy(button, true, 'Deleting…');
    D.api('DELETE', apiUrl).then(function (result) {
      if (result.ok || result.status === 404) {
        gone = true;
        D.stashToast({ title: 'File deleted', description: name + ' and its results were deleted.', kind: 'success' });
        window.location.assign(homeUrl);
        return;
      }
      setBusy(button, false, label);
      D.toast({ title: 'Could not delete', description: D.errorMessage(result.status, result.text), kind: 'error' });
    });
  }

  function replace(input) {
    var chosen = input.files && input.files[0];
    input.value = '';
    if (!chosen) return;
    if (chosen.size === 0) {
      D.toast({ title: 'Not replaced', description: 'The file is empty.', kind: 'error' });
      return;
    }
    // A file larger than a chunk goes resumably (tus), as on the dashboard.
    var limits = D.uploadLimits(input);
    var limit = limits.limit(chosen);
    if (chosen.size > limit.bytes) {
      D.toast({ title: 'Not replaced', kind: 'error',
                description: chosen.name + ' is over the ' + limit.label + ' limit.' });
      return;
    }
    var label = document.getElementById('replace');
    var message = role('status-message');
    input.disabled = true;
    label.setAttribute('aria-disabled', 'true');
    message.textContent = 'Uploading ' + chosen.name + '…';

    var onProgress = function (fraction) {
      message.textContent = 'Uploading ' + chosen.name + '… ' + D.percent(fraction) + '%';
    };
    var sent = limits.resumable(chosen)
      ? D.uploadResumable(chosen, { chunkSize: limits.chunkBytes, userId: limits.userId,
                                    replaces: fileId(), onProgress: onProgress }).done
      : D.upload(chosen, { method: 'PUT', url: apiUrl, onProgress: onProgress });
    sent.then(function (result) {
      input.disabled = false;
      label.removeAttribute('aria-disabled');
      var data = result.data;
      if (!result.ok || !data || data.id !== fileId()) {
        message.textContent = '';
        D.toast({ title: 'Could not replace', description: D.errorMessage(result.status, result.text), kind: 'error' });
        return;
      }
      refresh(data.last_event_id);
      D.toast({ title: 'Replaced', description: data.name + ' is being processed again; this page updates when it is done.' });
    });
  }

  // --- charts (uPlot) ----------------------------------------------------------------

  var MAX_POINTS = 5000;        // the endpoint's limit
  var MIN_VISIBLE_POINTS = 40;  // fewer buckets than this in a zoomed view: fetch finer ones
  var charts = [];
  var sharedZoom = null;  // the x range every chart shows when zoomed, else null

  function cssVar(name, fallback) {
    var value = window.getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  /** "#rrggbb" (or "#rgb") with an alpha, for canvas fills. */
  function alpha(hex, a) {
    var h = String(hex).replace('#', '');
    if (h.length === 3) h = h.split('').map(function (c) { return c + c; }).join('');
    if (!/^[0-9a-f]{6}$/i.test(h)) return hex;
    var n = parseInt(h, 16);
    return 'rgba(' + (n >> 16 & 255) + ',' + (n >> 8 & 255) + ',' + (n & 255) + ',' + a + ')';
  }

  function palette() {
    return {
      accent: cssVar('--accent', '#2f5bea'),
      danger: cssVar('--danger', '#c62828'),
      success: cssVar('--success', '#1e7d3a'),
      muted: cssVar('--muted', '#5b6272'),
      border: cssVar('--border', '#e1e4ea')
    };
  }

  function shortNumber(v) {
    if (v === null || v === undefined) return '—';
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1).replace(/\.0$/, '') + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, '') + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(1).replace(/\.0$/, '') + 'k';
    return String(Number(Number(v).toPrecision(4)));
  }

  /** A time (seconds) in UTC, as precise as the axis step (s) needs; in full without. */
  function utc(ts, step) {
    var d = new Date(ts * 1000);
    var date = d.getUTCFullYear() + '-' + D.pad(d.getUTCMonth() + 1) + '-' + D.pad(d.getUTCDate());
    var time = D.pad(d.getUTCHours()) + ':' + D.pad(d.getUTCMinutes());
    var seconds = ':' + D.pad(d.getUTCSeconds());
    if (step === undefined) return date + ' ' + time + seconds + ' UTC';
    if (step < 60) return time + seconds;
    if (step < 86400) return time;
    return step < 28 * 86400 ? date.slice(5) : date;
  }

  function showMessage(chart, text) {
    if (chart.plot) {
      chart.plot.destroy();
      chart.plot = null;
    }
    chart.canvas.textContent = '';
    var p = document.createElement('p');
    p.className = 'muted';
    p.textContent = text;
    chart.canvas.appendChild(p);
  }

  /**
   * The endpoint's buckets as uPlot's columns: time (s), min, max, mean, the values
   * beyond the rule's max and below its min (the anomalies' marks), and the rule.
   */
  function columns(data) {
    var buckets = (data.series || []).filter(function (b) {
      return b.start && b.mean !== null && b.mean !== undefined;
    }).map(function (b) {
      return { x: Date.parse(b.start) / 1000, min: b.min, max: b.max, mean: b.mean };
    }).sort(function (a, b) { return a.x - b.x; });
    var rule = data.rule;
    var cols = { x: [], min: [], max: [], mean: [], above: [], below: [], ruleMin: [], ruleMax: [], marks: 0 };
    buckets.forEach(function (b) {
      cols.x.push(b.x);
      cols.min.push(b.min);
      cols.max.push(b.max);
      cols.mean.push(b.mean);
      var above = rule && b.max > rule.max ? b.max : null;
      var below = rule && b.min < rule.min ? b.min : null;
      cols.above.push(above);
      cols.below.push(below);
      if (above !== null || below !== null) cols.marks += 1;
      if (rule) {
        cols.ruleMin.push(rule.min);
        cols.ruleMax.push(rule.max);
      }
    });
    return cols;
  }

  function aligned(cols, hasRule) {
    var data = [cols.x, cols.min, cols.max, cols.mean, cols.above, cols.below];
    if (hasRule) data.push(cols.ruleMin, cols.ruleMax);
    return data;
  }

  function size(chart) {
    var width = Math.max(260, Math.floor(chart.canvas.clientWidth || chart.figure.clientWidth || 600));
    return { width: width, height: width < 520 ? 200 : 240 };
  }

  function options(chart, hasRule) {
    var c = palette();
    var dims = size(chart);
    var series = [
      { label: 'time (UTC)', value: function (u, v) { return v === null || v === undefined ? '—' : utc(v); } },
      { label: 'min', stroke: alpha(c.accent, 0.45), width: 1, value: function (u, v) { return shortNumber(v); } },
      { label: 'max', stroke: alpha(c.accent, 0.45), width: 1, value: function (u, v) { return shortNumber(v); } },
      { label: 'mean', stroke: c.accent, width: 2, value: function (u, v) { return shortNumber(v); } },
      {
        label: 'above range', stroke: c.danger, fill: c.danger, width: 1,
        paths: function () { return null; },
        points: { show: true, size: 8, stroke: c.danger, fill: c.danger },
        value: function (u, v) { return shortNumber(v); }
      },
      {
        label: 'below range', stroke: c.danger, fill: c.danger, width: 1,
        paths: function () { return null; },
        points: { show: true, size: 8, stroke: c.danger, fill: c.danger },
        value: function (u, v) { return shortNumber(v); }
      }
    ];
    var bands = [{ series: [2, 1], fill: alpha(c.accent, 0.16) }];
    if (hasRule) {
      series.push(
        { label: 'range min', stroke: c.success, width: 1.5, dash: [6, 4], points: { show: false }, value: function (u, v) { return shortNumber(v); } },
        { label: 'range max', stroke: c.success, width: 1.5, dash: [6, 4], points: { show: false }, value: function (u, v) { return shortNumber(v); } }
      );
      bands.push({ series: [7, 6], fill: alpha(c.success, 0.07) });
    }
    var axis = { stroke: c.muted, grid: { stroke: alpha(c.border, 1), width: 1 }, ticks: { stroke: c.border, width: 1 } };
    return {
      width: dims.width,
      height: dims.height,
      scales: { x: { time: true } },
      series: series,
      bands: bands,
      axes: [
        Object.assign({
          values: function (u, splits, axisIdx, space, step) {
            return splits.map(function (t) { return utc(t, step); });
          }
        }, axis),
        Object.assign({ size: 56, values: function (u, splits) { return splits.map(shortNumber); } }, axis)
      ],
      cursor: { drag: { x: true, y: false }, sync: { key: 'dwellfi-file' } },
      legend: { live: true },
      hooks: {
        setScale: [function (u, key) { if (key === 'x') zoomed(chart); }]
      }
    };
  }

  function describe(chart, data, cols) {
    var info = chart.figure.querySelector('[data-role="chart-info"]');
    var text = data.record_count + ' value' + (data.record_count === 1 ? '' : 's');
    if (data.points < data.record_count) text += ' in ' + data.points + ' points';
    if (data.rule) text += ' · allowed ' + shortNumber(data.rule.min) + '–' + shortNumber(data.rule.max);
    text += ' · ' + cols.marks + ' point' + (cols.marks === 1 ? '' : 's') + ' outside';
    info.textContent = text;
    chart.canvas.setAttribute('aria-label', chart.metric + ' over time: ' + text);
  }

  function draw(chart, data, keepZoom) {
    var cols = columns(data);
    if (!cols.x.length) {
      showMessage(chart, 'No values for ' + chart.metric + (data.server ? ' on ' + data.server : '') + '.');
      return;
    }
    var hasRule = Boolean(data.rule);
    // A refinement keeps the chart's view; a chart drawn for the first time joins
    // the others' zoom (they may have been zoomed while it was loading).
    var zoom = keepZoom && chart.plot ? { min: chart.plot.scales.x.min, max: chart.plot.scales.x.max }
      : (!chart.plot ? sharedZoom : null);
    chart.data = data;
    chart.fetching = false;
    if (chart.plot && chart.hasRule === hasRule) {
      chart.plot.setData(aligned(cols, hasRule), !zoom);
      if (zoom) chart.plot.setScale('x', zoom);
    } else {
      if (chart.plot) chart.plot.destroy();
      chart.canvas.textContent = '';
      chart.hasRule = hasRule;
      chart.plot = new uPlot(options(chart, hasRule), aligned(cols, hasRule), chart.canvas);
      if (zoom) chart.plot.setScale('x', zoom);
    }
    describe(chart, data, cols);
  }

  function load(chart, points, keepZoom) {
    var query = '?metric=' + encodeURIComponent(chart.metric) + '&points=' + points;
    var server = document.getElementById('chart-server');
    if (server && server.value) query += '&server=' + encodeURIComponent(server.value);
    var mine = ++chart.request;
    chart.points = points;
    chart.fetching = true;
    chart.canvas.setAttribute('aria-busy', 'true');
    return D.api('GET', apiUrl + 'metrics/' + query).then(function (result) {
      if (mine !== chart.request) return;
      chart.canvas.setAttribute('aria-busy', 'false');
      chart.fetching = false;
      if (!result.ok || !result.data) {
        showMessage(chart, 'Could not load the chart: ' + D.errorMessage(result.status, result.text));
        return;
      }
      draw(chart, result.data, keepZoom);
    });
  }

  function basePoints(chart) {
    return Math.max(50, Math.min(1000, Math.round(size(chart).width / 2)));
  }

  function fullRange(chart) {
    var xs = chart.plot.data[0];
    return { min: xs[0], max: xs[xs.length - 1] };
  }

  function isZoomed(chart) {
    if (!chart.plot || !chart.plot.data[0].length) return false;
    var full = fullRange(chart);
    var x = chart.plot.scales.x;
    return x.min > full.min || x.max < full.max;
  }

  /** After a zoom: show "Reset zoom", and fetch finer buckets when few are visible. */
  function zoomed(chart) {
    var reset = chart.figure.querySelector('[data-role="chart-reset"]');
    var zoomedIn = isZoomed(chart);
    reset.hidden = !zoomedIn;
    sharedZoom = zoomedIn ? { min: chart.plot.scales.x.min, max: chart.plot.scales.x.max } : null;
    window.clearTimeout(chart.refineTimer);
    if (!zoomedIn || chart.fetching || !chart.data) return;
    chart.refineTimer = window.setTimeout(function () {
      var xs = chart.plot.data[0];
      var x = chart.plot.scales.x;
      var visible = xs.filter(function (t) { return t >= x.min && t <= x.max; }).length;
      var coarse = chart.data.points < chart.data.record_count;
      if (!coarse || visible >= MIN_VISIBLE_POINTS || chart.points >= MAX_POINTS) return;
      var wanted = Math.ceil(chart.points * MIN_VISIBLE_POINTS * 2 / Math.max(visible, 1));
      load(chart, Math.min(MAX_POINTS, Math.max(wanted, chart.points * 2)), true);
    }, 250);
  }

  /** Zooming one chart zooms them all (a drag does so through uPlot's cursor sync). */
  function zoomAll(range) {
    charts.forEach(function (chart) { if (chart.plot) chart.plot.setScale('x', range); });
  }

  function resetZoom(chart) {
    if (chart.plot) zoomAll(fullRange(chart));
  }

  /** Keyboard zoom on a focused chart: + and - zoom, arrows pan, 0 resets. */
  function onChartKey(chart, event) {
    if (!chart.plot) return;
    var x = chart.plot.scales.x;
    var span = x.max - x.min;
    var full = fullRange(chart);
    var next = null;
    if (event.key === '+' || event.key === '=' || event.key === 'ArrowUp') next = { min: x.min + span / 4, max: x.max - span / 4 };
    else if (event.key === '-' || event.key === 'ArrowDown') next = { min: x.min - span / 2, max: x.max + span / 2 };
    else if (event.key === 'ArrowLeft') next = { min: x.min - span / 4, max: x.max - span / 4 };
    else if (event.key === 'ArrowRight') next = { min: x.min + span / 4, max: x.max + span / 4 };
    else if (event.key === '0' || event.key === 'Home') next = full;
    if (!next) return;
    event.preventDefault();
    var width = next.max - next.min;
    if (width >= full.max - full.min) next = full;
    else if (next.min < full.min) next = { min: full.min, max: full.min + width };
    else if (next.max > full.max) next = { min: full.max - width, max: full.max };
    zoomAll(next);
  }

  function setupChart(figure) {
    var chart = {
      metric: figure.dataset.metric,
      figure: figure,
      canvas: figure.querySelector('[data-role="chart-canvas"]'),
      plot: null, data: null, request: 0, points: 0, fetching: false, refineTimer: null,
      generation: null
    };
    chart.canvas.tabIndex = 0;
    chart.canvas.setAttribute('role', 'img');
    chart.canvas.addEventListener('keydown', function (event) { onChartKey(chart, event); });
    chart.canvas.addEventListener('dblclick', function () { resetZoom(chart); });
    figure.querySelector('[data-role="chart-reset"]').addEventListener('click', function () { resetZoom(chart); });
    return chart;
  }

  /**
   * A chart for each figure the page shows: on the first paint, and after each
   * refresh, which may have added figures (set up here), removed some (their plots
   * destroyed) or kept some as they were drawn: those load their data again only
   * when the file's content changed (its generation).
   */
  function syncCharts() {
    charts = charts.filter(function (chart) {
      if (chart.figure.isConnected) return true;
      if (chart.plot) chart.plot.destroy();
      return false;
    });
    if (!charts.length) sharedZoom = null;
    var figures = article.querySelectorAll('figure.chart[data-metric]');
    if (figures.length && !window.uPlot) {
      figures.forEach(function (figure) {
        figure.querySelector('[data-role="chart-canvas"]').textContent = 'The charting library did not load.';
      });
      return;
    }
    var generation = article.dataset.generation;
    figures.forEach(function (figure) {
      var chart = charts.filter(function (c) { return c.figure === figure; })[0];
      if (!chart) {
        chart = setupChart(figure);
        charts.push(chart);
      } else if (chart.generation === generation) {
        return;
      }
      chart.generation = generation;
      load(chart, basePoints(chart), false);
    });
  }

  function watchCharts() {
    article.addEventListener('change', function (event) {
      if (event.target.id !== 'chart-server') return;
      charts.forEach(function (chart) { load(chart, basePoints(chart), false); });
    });
    var resizeTimer = null;
    var width = article.clientWidth;
    var onResize = function () {
      if (article.clientWidth === width) return; // a refresh changed the height only
      width = article.clientWidth;
      window.clearTimeout(resizeTimer);
      resizeTimer = window.setTimeout(function () {
        charts.forEach(function (chart) { if (chart.plot) chart.plot.setSize(size(chart)); });
      }, 120);
    };
    if (window.ResizeObserver) new ResizeObserver(onResize).observe(article);
    else window.addEventListener('resize', onResize);
  }

  function start() {
    article = document.querySelector('article.file-detail[data-file-id]');
    if (!article) return;
    apiUrl = article.dataset.apiUrl;
    homeUrl = article.dataset.homeUrl || '/';

    document.getElementById('reprocess').addEventListener('click', reprocess);
    document.getElementById('delete').addEventListener('click', remove);
    var replaceInput = document.getElementById('replace-input');
    replaceInput.addEventListener('change', function () { replace(replaceInput); });
    document.getElementById('download').addEventListener('click', function () {
      D.toast({ title: 'Download started', description: fileName() + ' is being saved by your browser.', timeout: 4000 });
    });
    // The morph keeps the article and these controls (matched by their ids).
    article.addEventListener('htmx:after:swap', syncCharts);
    article.addEventListener('dwellfi:gone', fileGone);
    D.onFileEvent(onMessage);
    watchCharts();
    syncCharts();
  }

  start();
})();
