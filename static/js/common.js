/* DwellFi shared helpers: formatting, CSRF, JSON data from templates, toasts, and
 * showing a file again (its server-rendered fragment fetched and morphed in by htmx,
 * or its progress moved by a `file.progress` message).
 * Everything this code inserts into the DOM goes through textContent, never
 * innerHTML; what htmx inserts is the server's own rendering. */
(function () {
  'use strict';

  var D = window.DwellFi = window.DwellFi || {};
  var STASH_KEY = 'dwellfi:toasts';

  /** The value of a `json_script` element, or `fallback`. */
  D.readJSON = function (id, fallback) {
    var el = document.getElementById(id);
    if (!el) return fallback;
    try { return JSON.parse(el.textContent); } catch (e) { return fallback; }
  };

  /** Django's CSRF token: the csrftoken cookie, else the page's hidden input. */
  D.csrfToken = function () {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    var input = document.querySelector('input[name="csrfmiddlewaretoken"]');
    return input ? input.value : '';
  };

  /** Like Django's filesizeformat: "1 byte", "532 bytes", "2.3 KB", "1.0 MB". */
  D.formatSize = function (bytes) {
    var n = Number(bytes) || 0;
    var nbsp = '\u00a0';
    if (n < 1024) return n + nbsp + (n === 1 ? 'byte' : 'bytes');
    var units = ['KB', 'MB', 'GB', 'TB', 'PB'];
    var i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return n.toFixed(1) + nbsp + units[i];
  };

  /** A number of two digits at least: 7 -> "07". */
  var pad = D.pad = function (n) { return (n < 10 ? '0' : '') + n; };

  /** An ISO timestamp as local "YYYY-MM-DD HH:MM" (with seconds when asked). */
  function formatTime(iso, withSeconds) {
    if (!iso) return '';
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    var text = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) +
      ' ' + pad(d.getHours()) + ':' + pad(d.getMinutes());
    return withSeconds ? text + ':' + pad(d.getSeconds()) : text;
  }

  /** Show the server's <time datetime data-localize> under `root` in the browser's time zone. */
  function localizeTimes(root) {
    root.querySelectorAll('time[datetime][data-localize]').forEach(function (el) {
      var iso = el.getAttribute('datetime');
      el.textContent = formatTime(iso, el.dataset.localize === 'seconds');
      el.title = new Date(iso).toString();
    });
  }

  /** A progress as a fraction within 0..1 (anything else, or nothing, is 0). */
  function clamp(value) {
    return Math.min(Math.max(Number(value) || 0, 0), 1);
  }

  /** A percentage 0..100 from a 0..1 fraction. */
  D.percent = function (fraction) {
    return Math.round(clamp(fraction) * 100);
  };

  /** The `detail` of a JSON error response, or a sensible message for its status. */
  D.errorMessage = function (status, bodyText) {
    var detail = '';
    try {
      var body = JSON.parse(bodyText);
      if (body && typeof body.detail === 'string') detail = body.detail;
      else if (body && body.detail) detail = JSON.stringify(body.detail);
    } catch (e) { /* not JSON: fall back on the status */ }
    if (detail) return detail;
    switch (status) {
      case 0: return 'Network error: the request did not reach the server.';
      case 400: return 'The server refused this request.';
      case 401: case 403: return 'Your session has expired or you lack access: reload the page and sign in again.';
      case 404: return 'Not found: it may have been deleted.';
      case 413: return 'The file is too large.';
      case 429: return 'Too many requests: wait a moment and try again.';
      default: return 'The server answered ' + status + '. Try again in a moment.';
    }
  };

  /** fetch() with the session cookie, the CSRF header and JSON accepted. */
  D.api = function (method, url, body) {
    var headers = { 'Accept': 'application/json', 'X-CSRFToken': D.csrfToken() };
    return fetch(url, {
      method: method,
      credentials: 'same-origin',
      headers: headers,
      body: body
    }).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        return { ok: response.ok, status: response.status, data: data, text: text };
      });
    }, function () {
      return { ok: false, status: 0, data: null, text: '' };
    });
  };

  // --- showing a file again ------------------------------------------------------------

  function eventId(value) {
    return value === null || value === undefined || value === '' ? null : Number(value);
  }

  /**
   * Whether `lastEventId` (a file's last durable event) is older than what `el`
   * shows (its `data-last-event-id`): what it describes is stale, and showing it
   * would roll the element back (a late upload response, a late progress message).
   */
  D.isStale = function (el, lastEventId) {
    var shown = eventId(el.dataset.lastEventId);
    var given = eventId(lastEventId);
    return shown !== null && given !== null && given < shown;
  };

  /** Whether `lastEventId` is news to `el`: newer than what it shows, or either unknown. */
  D.isNewer = function (el, lastEventId) {
    var shown = eventId(el.dataset.lastEventId);
    var given = eventId(lastEventId);
    return shown === null || given === null || given > shown;
  };

  function statusMessage(status, fraction) {
    if (status === 'processing') return D.percent(fraction) + '% done';
    if (status === 'queued') return 'Waiting for a worker';
    return '';
  }

  /**
   * Apply a `file.progress` message to what `el` (a row, the file page) shows: the
   * status badge, the progress bar and, where it has them, the status line and the
   * attempts; nothing else, and nothing at all from a stale message.
   */
  D.showProgress = function (el, message) {
    if (D.isStale(el, message.last_event_id)) return;
    var fraction = clamp(message.progress);
    el.dataset.status = message.status;
    var part = function (name) { return el.querySelector('[data-role="' + name + '"]'); };
    var badge = part('status');
    badge.className = 'badge badge--' + message.status;
    badge.textContent = message.status;
    var bar = part('progress');
    bar.value = fraction;
    bar.textContent = bar.title = D.percent(fraction) + '%';
    var line = part('status-message');
    if (line) line.textContent = statusMessage(message.status, fraction);
    var attempts = part('attempts');
    if (attempts && message.attempts !== undefined) attempts.textContent = String(message.attempts);
  };

  /**
   * Show `el` (an element with an id: a row, the file page's article) as the server
   * renders it now: htmx fetches `url`, takes the element with that id from the
   * answer and morphs it in, so the element and whatever in it did not change stay
   * (focus, a drawn chart). htmx runs one request per element at a time and keeps
   * one more waiting, which fetches after the answer before it: a burst of events
   * costs two requests, and the last answer is the newest.
   */
  D.refresh = function (el, url) {
    if (!window.htmx) return; // the library did not load: the page stays as it is
    window.htmx.ajax('GET', url, { source: el, target: el, select: '#' + CSS.escape(el.id), swap: 'outerMorph' });
  };

  // Every refresh's answer, before htmx swaps it in: only the element asked for, and
  // never one older than what the page shows. An error page (or the sign-in page a
  // lapsed session is sent to) is not swapped in; a 404 says the file is gone, and
  // the element hears `dwellfi:gone`.
  document.addEventListener('htmx:before:swap', function (event) {
    var ctx = event.detail.ctx;
    var target = ctx.target;
    var main = event.detail.tasks.filter(function (task) { return task.type === 'main'; })[0];
    var incoming = main && main.fragment.firstElementChild;
    if (ctx.response.status === 404) {
      event.preventDefault();
      target.dispatchEvent(new CustomEvent('dwellfi:gone', { bubbles: true }));
    } else if (ctx.response.status >= 400 || !incoming || incoming.id !== target.id ||
               D.isStale(target, incoming.dataset.lastEventId)) {
      event.preventDefault();
    }
  });

  // A morphed-in fragment comes with the server's UTC times: show them in local time.
  document.addEventListener('htmx:after:swap', function (event) {
    localizeTimes(event.detail.ctx.target);
  });

  // --- toasts ----------------------------------------------------------------------

  var MAX_TOASTS = 5;

  function dismiss(toast) {
    if (!toast.parentNode || toast.classList.contains('is-leaving')) return;
    toast.classList.add('is-leaving');
    window.setTimeout(function () {
      if (toast.parentNode) toast.parentNode.removeChild(toast);
    }, 220);
  }

  /**
   * Show a notification: {title, description, kind: info|success|error|warning,
   * href, linkText, timeout (ms; 0 keeps it until closed)}.
   */
  D.toast = function (options) {
    var region = document.getElementById('toasts');
    if (!region) return null;
    var opts = options || {};
    var toast = document.createElement('div');
    toast.className = 'toast toast--' + (opts.kind || 'info');
    toast.setAttribute('role', opts.kind === 'error' ? 'alert' : 'status');
    toast.setAttribute('aria-live', opts.kind === 'error' ? 'assertive' : 'polite');
    toast.dataset.kind = opts.kind || 'info';

    var title = document.createElement('p');
    title.className = 'toast__title';
    title.textContent = opts.title || '';
    toast.appendChild(title);

    var close = document.createElement('button');
    close.type = 'button';
    close.className = 'toast__close';
    close.setAttribute('aria-label', 'Dismiss notification');
    close.textContent = '\u00d7';
    close.addEventListener('click', function () { dismiss(toast); });
    toast.appendChild(close);

    if (opts.description) {
      var body = document.createElement('p');
      body.className = 'toast__body';
      body.textContent = opts.description;
      toast.appendChild(body);
    }
    if (opts.href) {
      var link = document.createElement('a');
      link.className = 'toast__link';
      link.href = opts.href;
      link.textContent = opts.linkText || 'Open';
      toast.appendChild(link);
    }
    toast._options = opts;

    region.appendChild(toast);
    while (region.children.length > MAX_TOASTS) region.removeChild(region.firstElementChild);

    var timeout = opts.timeout === undefined ? 7000 : opts.timeout;
    if (timeout > 0) {
      var timer = null;
      var arm = function () { timer = window.setTimeout(function () { dismiss(toast); }, timeout); };
      var disarm = function () { window.clearTimeout(timer); };
      toast.addEventListener('mouseenter', disarm);
      toast.addEventListener('mouseleave', arm);
      toast.addEventListener('focusin', disarm);
      toast.addEventListener('focusout', arm);
      arm();
    }
    return toast;
  };

  /** Show a toast on the next page this tab opens (after a navigation). */
  D.stashToast = function (options) {
    try {
      var kept = JSON.parse(window.sessionStorage.getItem(STASH_KEY) || '[]');
      kept.push(options);
      window.sessionStorage.setItem(STASH_KEY, JSON.stringify(kept));
    } catch (e) { /* storage unavailable: the next page shows no toast */ }
  };

  /** Keep the visible toasts across a reload (sessionStorage), then reload. */
  D.reloadKeepingToasts = function () {
    try {
      var kept = [];
      document.querySelectorAll('#toasts .toast:not(.is-leaving)').forEach(function (t) {
        if (t._options) kept.push(t._options);
      });
      if (kept.length) window.sessionStorage.setItem(STASH_KEY, JSON.stringify(kept));
    } catch (e) { /* storage unavailable: the toasts are lost, the page still reloads */ }
    window.location.reload();
  };

  function restoreToasts() {
    var kept = null;
    try {
      kept = JSON.parse(window.sessionStorage.getItem(STASH_KEY) || 'null');
      window.sessionStorage.removeItem(STASH_KEY);
    } catch (e) { kept = null; }
    if (Array.isArray(kept)) kept.forEach(function (opts) { D.toast(opts); });
  }

  function start() {
    localizeTimes(document);
    restoreToasts();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
