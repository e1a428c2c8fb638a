/* DwellFi home page: upload files (picker or drag and drop) and keep the table live:
 * an event about a file has its row fetched again from the server and morphed in
 * (common.js `DwellFi.refresh`), a `file.progress` message moves its status and
 * progress bar only. A file larger than one chunk goes resumably (tus, upload.js
 * `DwellFi.uploadResumable`): it can be paused and resumed, and after a reload the
 * page lists what was left unfinished until the file is chosen again. */
(function () {
  'use strict';

  var D = window.DwellFi;
  var MAX_PARALLEL = 3;
  var DONE_ITEM_LINGER = 6000;

  var form, input, uploadsEl, body, emptyEl, wrapEl, countEl;
  var limits = null;  // DwellFi.uploadLimits of the upload form
  var page = 1;
  var filters = { status: '', kind: '', query: '' };
  var queue = [];
  var active = 0;

  // --- the files table -----------------------------------------------------------
  // Each row is the server's `files/_file_row.html`: the first paint, and after
  // every event the same partial fetched again from `/f/ID/row/` and morphed in.

  function rowOf(fileId) {
    return document.getElementById('file-' + fileId);
  }

  function rowUrl(fileId) {
    return '/f/' + encodeURIComponent(fileId) + '/row/';
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
   * Show a file as the server has it now, given its resource (from an event or an
   * upload's answer): its row is fetched again, unless the resource is no news to
   * it (by `last_event_id`), so a late answer never costs a request; a file without
   * a row gets one on top when `insert` says so.
   */
  function showFile(file, insert) {
    var row = rowOf(file.id);
    if (!row) {
      if (!insert) return;
      // An empty, hidden row holds the place; the server's row is morphed into it.
      row = document.createElement('tr');
      row.id = 'file-' + file.id;
      row.className = 'file-row';
      row.hidden = true;
      body.insertBefore(row, body.firstChild);
      adjustCount(1);
      updateEmptyState();
    } else if (!D.isNewer(row, file.last_event_id)) {
      return;
    }
    D.refresh(row, rowUrl(file.id));
  }

  function removeRow(row) {
    if (!row || !body.contains(row)) return;
    row.parentNode.removeChild(row);
    adjustCount(-1);
    updateEmptyState();
  }

  function onMessage(message) {
    if (message.type === 'file.deleted') {
      removeRow(rowOf(message.file_id));
      return;
    }
    if (message.type === 'file.progress') {
      // Tiny: no resource, only what the row's status and progress bar need.
      var row = rowOf(message.file_id);
      if (row) D.showProgress(row, message);
      return;
    }
    var file = message.file;
    if (!file || typeof file !== 'object' || file.id === undefined || file.id === null) return;
    showFile(file, message.type === 'file.queued' && belongsOnTop(file));
  }

  function watchRows() {
    // A row that changes status flashes; one that was only holding the place is new.
    body.addEventListener('htmx:before:swap', function (event) {
      event.detail.ctx.shownStatus = event.detail.ctx.target.dataset.status;
    });
    body.addEventListener('htmx:after:swap', function (event) {
      var ctx = event.detail.ctx;
      if (ctx.shownStatus === undefined) flash(ctx.target, 'is-new');
      else if (ctx.shownStatus !== ctx.target.dataset.status) flash(ctx.target, 'is-updated');
    });
    body.addEventListener('dwellfi:gone', function (event) { removeRow(event.target); });
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

    if (limits.resumable(job.file)) {
      sendResumable(job, bar);
      return;
    }
    D.upload(job.file, {
      method: 'POST',
      url: '/api/files/',
      onProgress: function (fraction) { showSent(item, bar, fraction); }
    }).then(function (result) {
      active -= 1;
      window.setTimeout(pump, 0);
      finish(job, result);
    });
  }

  function showSent(item, bar, fraction) {
    bar.value = fraction;
    setItem(item, 'uploading', fraction >= 1
      ? 'Sent; the server is storing it…' : 'Uploading… ' + D.percent(fraction) + '%');
  }

  /** A resumable upload, with its Pause (then Resume and Discard) buttons. A paused
   * upload gives its place in the queue to the next file. */
  function sendResumable(job, bar) {
    var item = job.item;
    var name = job.file.name;
    var paused = false;
    var control = D.uploadResumable(job.file, {
      chunkSize: limits.chunkBytes,
      userId: limits.userId,
      onProgress: function (fraction) { if (!paused) showSent(item, bar, fraction); },
      onResume: function () { setItem(item, 'uploading', 'Going on from where it stopped…'); }
    });

    function pause() {
      paused = true;
      control.pause();
      setItem(item, 'paused', 'Paused at ' + D.percent(bar.value) + '%.');
      setActions(item, [
        { label: 'Resume', ariaLabel: 'Resume uploading ' + name, onClick: resume },
        { label: 'Discard', ariaLabel: 'Discard the upload of ' + name, onClick: control.discard }
      ]);
      active -= 1;
      pump();
    }

    function resume() {
      paused = false;
      active += 1;
      setItem(item, 'uploading', 'Going on from where it stopped…');
      showPause();
      control.resume();
    }

    function showPause() {
      setActions(item, [{ label: 'Pause', ariaLabel: 'Pause uploading ' + name, onClick: pause }]);
    }

    showPause();
    control.done.then(function (result) {
      if (!paused) {
        active -= 1;
        window.setTimeout(pump, 0);
      }
      if (result.status === -1) {
        removeItem(item); // discarded: the server deleted its bytes
        return;
      }
      setActions(item, []);
      finish(job, result);
    });
  }

  /** Show an upload's answer: the new file's row, or why it failed. */
  function finish(job, result) {
    var item = job.item;
    var file = result.data;
    if (result.status === 201 && file && file.id !== undefined) {
      showFile(file, true);
      setItem(item, 'done', 'Uploaded. Its progress shows in the table below.');
      setActions(item, [{ label: 'Open', href: '/f/' + encodeURIComponent(file.id) + '/',
                          ariaLabel: 'Open ' + job.file.name }]);
      window.setTimeout(function () { removeItem(item); }, DONE_ITEM_LINGER);
      return;
    }
    var text = D.errorMessage(result.status, result.text);
    if (result.status === 413 && !/limit|large/i.test(text)) {
      text += ' The limit is ' + limits.limit(job.file).label + '.';
    }
    if (result.status === 429 && result.retryAfter && /^\d+$/.test(result.retryAfter)) {
      text += ' (retry in ' + result.retryAfter + ' s)';
    }
    failItem(job, text, result.status === 0 || result.status === 429 || result.status >= 500);
  }

  // --- resumable uploads left unfinished (a reload, a closed tab) -------------------

  function listUnfinished() {
    D.unfinishedUploads(limits.userId).then(function (uploads) {
      uploads.forEach(function (upload) {
        var item = createItem({ name: upload.name, size: upload.size });
        item.dataset.unfinished = upload.name + '\n' + upload.size;
        var bar = item.querySelector('[data-role="upload-progress"]');
        bar.value = upload.size ? upload.offset / upload.size : 0;
        setItem(item, 'paused', 'Stopped at ' + D.percent(bar.value) +
          '%. Choose this file again to go on from there.');
        setActions(item, [{
          label: 'Discard',
          ariaLabel: 'Discard the upload of ' + upload.name,
          onClick: function () { removeItem(item); D.discardUpload(upload); }
        }]);
      });
    });
  }

  /** A chosen file takes the place of its unfinished upload's item. */
  function replaceUnfinished(file) {
    Array.prototype.slice.call(uploadsEl.querySelectorAll('[data-unfinished]')).forEach(function (item) {
      if (item.dataset.unfinished === file.name + '\n' + file.size) removeItem(item);
    });
  }

  function addFiles(list) {
    Array.prototype.slice.call(list || []).forEach(function (file) {
      replaceUnfinished(file);
      var job = { file: file, item: createItem(file) };
      var limit = limits.limit(file);
      if (file.size > limit.bytes) {
        failItem(job, 'Too large: ' + D.formatSize(file.size) + ' is over the ' +
          limit.label + ' limit. It was not uploaded.', false);
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
    emptyEl = document.getElementById('files-empty');
    wrapEl = document.getElementById('files-table-wrap');
    countEl = document.getElementById('files-count');
    if (!form || !body) return;

    limits = D.uploadLimits(form);
    var table = document.getElementById('files-table');
    page = Number(table.dataset.page) || 1;
    filters = {
      status: table.dataset.filterStatus || '',
      kind: table.dataset.filterKind || '',
      query: table.dataset.filterQuery || ''
    };

    watchRows();
    input.addEventListener('change', function () {
      var chosen = Array.prototype.slice.call(input.files || []);
      input.value = '';
      addFiles(chosen);
    });
    form.addEventListener('submit', function (event) { event.preventDefault(); });
    setupDragAndDrop();
    D.onFileEvent(onMessage);
    if (limits.canResume) listUnfinished();
  }

  start();
})();
