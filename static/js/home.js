/* DwellFi home page: upload files (picker or drag and drop) and keep the table live. */
(function () {
  'use strict';

  var D = window.DwellFi;
  var MAX_PARALLEL = 3;
  var DONE_ITEM_LINGER = 6000;

  var form, input, uploadsEl, body, template, emptyEl, wrapEl, countEl;
  var maxBytes = Infinity;
  var maxLabel = '';
  var page = 1;
  var filters = { status: '', kind: '', query: '' };
  var queue = [];
  var active = 0;

  // --- the files table -----------------------------------------------------------

  function cell(row, role) {
    return row.querySelector('[data-role="' + role + '"]');
  }

  /** Write a file resource into a row; every value goes in as text. */
  function fillRow(row, file) {
    row.id = 'file-' + file.id;
    row.dataset.fileId = String(file.id);
    row.dataset.lastEventId = file.last_event_id === null || file.last_event_id === undefined
      ? '' : String(file.last_event_id);

    var name = cell(row, 'name');
    name.textContent = file.name;
    name.href = '/f/' + encodeURIComponent(file.id) + '/';

    fillStatus(row, file.status, file.progress);
    cell(row, 'progress').setAttribute('aria-label', 'Progress of ' + file.name);

    cell(row, 'kind').textContent = file.kind || '\u2014';

    var size = cell(row, 'size');
    size.textContent = D.formatSize(file.size);
    size.title = file.size + ' bytes';

    cell(row, 'records').textContent = String(file.record_count || 0);
    var invalid = cell(row, 'invalid');
    invalid.hidden = !file.invalid_record_count;
    invalid.textContent = file.invalid_record_count ? file.invalid_record_count + ' invalid' : '';

    var anomalies = cell(row, 'anomalies');
    anomalies.textContent = String(file.anomaly_count || 0);
    anomalies.classList.toggle('has-anomalies', Boolean(file.anomaly_count));

    cell(row, 'error').textContent = file.status === 'failed' ? D.formatError(file.error) : '';

    var time = cell(row, 'created').querySelector('time');
    if (time && file.created_at) {
      time.setAttribute('datetime', file.created_at);
      D.localizeTime(time);
    }
  }

  /** Write a status and progress into a row (all a `file.progress` message has). */
  function fillStatus(row, status, progressValue) {
    row.dataset.status = status;
    var statusCell = cell(row, 'status');
    var badge = statusCell.querySelector('.badge');
    if (!badge) {
      statusCell.textContent = '';
      badge = document.createElement('span');
      statusCell.appendChild(badge);
    }
    badge.className = 'badge badge--' + status;
    badge.textContent = status;

    var progress = cell(row, 'progress');
    var fraction = status === 'processed' ? 1 : Math.min(Math.max(Number(progressValue) || 0, 0), 1);
    progress.value = fraction;
    progress.textContent = D.percent(fraction) + '%';
    progress.title = D.percent(fraction) + '%';
  }

  /** Whether what a row shows is newer (by `last_event_id`) than `lastEventId`. */
  function rowIsNewer(row, lastEventId) {
    var shown = row.dataset.lastEventId;
    return shown !== '' && shown !== undefined && lastEventId !== null &&
      lastEventId !== undefined && Number(lastEventId) < Number(shown);
  }

  function flash(row, className) {
    row.classList.remove('is-new', 'is-updated');
    void row.offsetWidth; // restart the animation
    row.classList.add(className);
  }

  function updateEmptyState() {
    var rows = body.querySelectorAll('tr.file-row').length;
    emptyEl.hidden = rows > 0;
    wrapEl.hidden = rows === 0;
  }

  function adjustCount(delta) {
    if (!countEl) return;
    var n = Math.max(0, (Number(countEl.dataset.count) || 0) + delta);
    countEl.dataset.count = String(n);
    countEl.textContent = n + (n === 1 ? ' file' : ' files') + (isFiltered() ? ' match' : '');
    countEl.hidden = n === 0;
  }

  function isFiltered() {
    return Boolean(filters.status || filters.kind || filters.query);
  }

  /** Whether a file passes the filters the page was rendered with. */
  function matchesFilters(file) {
    if (filters.status && file.status !== filters.status) return false;
    if (filters.kind && file.kind !== filters.kind) return false;
    if (filters.query && String(file.name || '').toLowerCase().indexOf(filters.query.toLowerCase()) === -1) {
      return false;
    }
    return true;
  }

  /** Whether a file unknown to this page belongs at the top of it. */
  function belongsOnTop(file) {
    if (page !== 1 || !matchesFilters(file)) return false;
    var first = body.querySelector('tr.file-row time[datetime]');
    if (!first || !file.created_at) return true;
    return new Date(file.created_at) >= new Date(first.getAttribute('datetime'));
  }

  /**
   * Apply a file resource: update its row, or add a row when `insert` says so.
   * A resource older than what the row shows (by `last_event_id`) is ignored, so a
   * late upload response or progress message never rolls a row back.
   */
  function applyFile(file, insert) {
    if (!file || file.id === undefined || file.id === null) return;
    var row = document.getElementById('file-' + file.id);
    if (row) {
      if (rowIsNewer(row, file.last_event_id)) return;
      var changed = row.dataset.status !== file.status;
      fillRow(row, file);
      if (changed) flash(row, 'is-updated');
      return;
    }
    if (!insert) return;
    row = template.content.firstElementChild.cloneNode(true);
    fillRow(row, file);
    body.insertBefore(row, body.firstChild);
    flash(row, 'is-new');
    adjustCount(1);
    updateEmptyState();
  }

  function removeFile(fileId) {
    var row = document.getElementById('file-' + fileId);
    if (!row || !body.contains(row)) return;
    row.parentNode.removeChild(row);
    adjustCount(-1);
    updateEmptyState();
  }

  function onMessage(message) {
    if (message.type === 'snapshot') {
      (message.files || []).forEach(function (file) { applyFile(file, false); });
      return;
    }
    if (message.type === 'file.deleted') {
      removeFile(message.file_id);
      return;
    }
    if (message.type === 'file.progress') {
      // Tiny: no resource, only what the row's status and progress bar need.
      var row = document.getElementById('file-' + message.file_id);
      if (row && !rowIsNewer(row, message.last_event_id)) fillStatus(row, message.status, message.progress);
      return;
    }
    if (!message.file || typeof message.file !== 'object') return;
    var file = Object.assign({}, message.file);
    if (message.status) file.status = message.status;
    if (typeof message.progress === 'number') file.progress = message.progress;
    applyFile(file, message.type === 'file.queued' && belongsOnTop(file));
  }

  // --- uploads ----------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function createItem(file) {
    var item = el('li', 'upload-item');
    item.dataset.state = 'waiting';
    item.dataset.name = file.name;
    var name = el('span', 'upload-item__name', file.name);
    name.title = file.name;
    item.appendChild(name);
    item.appendChild(el('span', 'upload-item__meta', D.formatSize(file.size)));
    var bar = el('progress');
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute('aria-label', 'Upload progress of ' + file.name);
    bar.dataset.role = 'upload-progress';
    item.appendChild(bar);
    var message = el('p', 'upload-item__message', 'Waiting…');
    message.dataset.role = 'upload-message';
    item.appendChild(message);
    item.appendChild(el('div', 'upload-item__actions'));
    uploadsEl.insertBefore(item, uploadsEl.firstChild);
    return item;
  }

  function setItem(item, state, text) {
    item.dataset.state = state;
    item.querySelector('[data-role="upload-message"]').textContent = text;
    var bar = item.querySelector('[data-role="upload-progress"]');
    bar.hidden = state === 'error';
    if (state === 'done') bar.value = 1;
  }

  function setActions(item, actions) {
    var box = item.querySelector('.upload-item__actions');
    box.textContent = '';
    actions.forEach(function (action) {
      var node;
      if (action.href) {
        node = el('a', 'button button--small', action.label);
        node.href = action.href;
      } else {
        node = el('button', 'button button--small', action.label);
        node.type = 'button';
        node.addEventListener('click', action.onClick);
      }
      if (action.ariaLabel) node.setAttribute('aria-label', action.ariaLabel);
      box.appendChild(node);
    });
  }

  function removeItem(item) {
    if (item.parentNode) item.parentNode.removeChild(item);
  }

  function failItem(job, text, canRetry) {
    setItem(job.item, 'error', text);
    var actions = [];
    if (canRetry) {
      actions.push({
        label: 'Retry',
        ariaLabel: 'Retry uploading ' + job.file.name,
        onClick: function () {
          setActions(job.item, []);
          setItem(job.item, 'waiting', 'Waiting…');
          queue.push(job);
          pump();
        }
      });
    }
    actions.push({
      label: 'Dismiss',
      ariaLabel: 'Dismiss ' + job.file.name,
      onClick: function () { removeItem(job.item); }
    });
    setActions(job.item, actions);
  }

  function pump() {
    while (active < MAX_PARALLEL && queue.length) send(queue.shift());
  }

  function send(job) {
    active += 1;
    var item = job.item;
    var bar = item.querySelector('[data-role="upload-progress"]');
    bar.value = 0;
    setItem(item, 'uploading', 'Uploading…');

    var xhr = new XMLHttpRequest();
    var finished = false;
    function done() {
      if (finished) return false;
      finished = true;
      active -= 1;
      window.setTimeout(pump, 0);
      return true;
    }

    xhr.open('POST', '/api/files/');
    xhr.setRequestHeader('X-CSRFToken', D.csrfToken());
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.addEventListener('progress', function (event) {
      if (!event.lengthComputable) return;
      bar.value = event.total ? event.loaded / event.total : 0;
      setItem(item, 'uploading', bar.value >= 1
        ? 'Sent; the server is storing it…' : 'Uploading… ' + D.percent(bar.value) + '%');
    });
    xhr.addEventListener('load', function () {
      if (!done()) return;
      if (xhr.status === 201) {
        var file = null;
        try { file = JSON.parse(xhr.responseText); } catch (e) { file = null; }
        if (file && file.id !== undefined) applyFile(file, true);
        setItem(item, 'done', 'Uploaded. Its progress shows in the table below.');
        if (file && file.id !== undefined) {
          setActions(item, [{ label: 'Open', href: '/f/' + encodeURIComponent(file.id) + '/',
                              ariaLabel: 'Open ' + job.file.name }]);
        }
        window.setTimeout(function () { removeItem(item); }, DONE_ITEM_LINGER);
        return;
      }
      var text = D.errorMessage(xhr.status, xhr.responseText);
      if (xhr.status === 413 && !/limit|large/i.test(text)) text += ' The limit is ' + maxLabel + '.';
      var retryAfter = xhr.getResponseHeader('Retry-After');
      if (xhr.status === 429 && retryAfter && /^\d+$/.test(retryAfter)) {
        text += ' (retry in ' + retryAfter + ' s)';
      }
      failItem(job, text, xhr.status === 429 || xhr.status >= 500);
    });
    xhr.addEventListener('error', function () {
      if (done()) failItem(job, D.errorMessage(0, ''), true);
    });
    xhr.addEventListener('abort', function () {
      if (done()) failItem(job, 'Upload cancelled.', true);
    });

    var data = new FormData();
    data.append('file', job.file, job.file.name);
    xhr.send(data);
  }

  function addFiles(list) {
    Array.prototype.slice.call(list || []).forEach(function (file) {
      var job = { file: file, item: createItem(file) };
      if (file.size > maxBytes) {
        failItem(job, 'Too large: ' + D.formatSize(file.size) + ' is over the ' + maxLabel +
          ' limit. It was not uploaded.', false);
        return;
      }
      if (file.size === 0) {
        failItem(job, 'The file is empty. It was not uploaded.', false);
        return;
      }
      queue.push(job);
    });
    pump();
  }

  function hasFiles(event) {
    var types = event.dataTransfer && event.dataTransfer.types;
    return Boolean(types) && Array.prototype.indexOf.call(types, 'Files') !== -1;
  }

  function setupDragAndDrop() {
    var depth = 0;
    // The whole page is a drop target; the drop zone lights up while a file is over it.
    document.addEventListener('dragenter', function (event) {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth += 1;
      form.classList.add('is-dragover');
    });
    document.addEventListener('dragleave', function (event) {
      if (!hasFiles(event)) return;
      depth = Math.max(0, depth - 1);
      if (depth === 0) form.classList.remove('is-dragover');
    });
    document.addEventListener('dragover', function (event) {
      if (!hasFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = 'copy';
    });
    document.addEventListener('drop', function (event) {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      form.classList.remove('is-dragover');
      addFiles(event.dataTransfer.files);
    });
  }

  function start() {
    form = document.getElementById('upload-form');
    input = document.getElementById('upload-input');
    uploadsEl = document.getElementById('uploads');
    body = document.getElementById('files-body');
    template = document.getElementById('file-row-template');
    emptyEl = document.getElementById('files-empty');
    wrapEl = document.getElementById('files-table-wrap');
    countEl = document.getElementById('files-count');
    if (!form || !body || !template) return;

    var limit = Number(form.dataset.maxBytes);
    if (limit > 0) maxBytes = limit;
    maxLabel = form.dataset.maxLabel || D.formatSize(maxBytes);
    var table = document.getElementById('files-table');
    page = Number(table.dataset.page) || 1;
    filters = {
      status: table.dataset.filterStatus || '',
      kind: table.dataset.filterKind || '',
      query: table.dataset.filterQuery || ''
    };

    // The server rendered the rows; redraw them from the same data in local time.
    (D.readJSON('files-data', []) || []).forEach(function (file) { applyFile(file, false); });

    input.addEventListener('change', function () {
      var chosen = Array.prototype.slice.call(input.files || []);
      input.value = '';
      addFiles(chosen);
    });
    form.addEventListener('submit', function (event) { event.preventDefault(); });
    setupDragAndDrop();
    D.onFileEvent(onMessage);
  }

  start();
})();
