/* DwellFi live events: one WebSocket to /notification/events, shared by the pages.
 *
 * The cursor starts at the page's `last_event_id` (json_script "last-event-id"), so
 * the server replays every durable event the page has not seen, then sends live
 * ones. Durable events carry an increasing `id`: anything at or below the highest
 * seen is a duplicate and dropped. `file.progress` has no id and is always passed on.
 * On close the client reconnects with exponential backoff (1 s to 30 s, jittered)
 * passing `?after=<highest id>`, so nothing is lost across reconnects. When the
 * socket keeps failing (a proxy that drops WebSockets, say), the client also polls
 * `GET /api/events/?after=<highest id>` until a socket stays open again: the same
 * durable events, through the same de-duplication. When the events after the
 * cursor are no longer kept (a `snapshot` with `reset`, or a 410 from the events
 * list), the page reloads: what it shows may be stale. A socket closed because the
 * user opened too many (4429) is not reopened at once, which would close another
 * tab's: the page polls until it is looked at again.
 *
 * Pages subscribe with `DwellFi.onFileEvent(fn)` (fn(message)).
 */
(function () {
  'use strict';

  var D = window.DwellFi = window.DwellFi || {};
  var BACKOFF_MIN = 1000;
  var BACKOFF_MAX = 30000;
  var STABLE_AFTER = 5000;     // an open socket this old resets the backoff
  var PING_EVERY = 25000;      // keeps proxies from closing an idle socket
  var SILENCE_LIMIT = 65000;   // no message (not even a pong) for this long: reconnect
  var CLOSE_UNAUTHENTICATED = 4401;
  var CLOSE_FORBIDDEN_ORIGIN = 4403;
  var CLOSE_REPLACED = 4429;   // the user opened too many sockets: this was the oldest
  var POLL_AFTER_FAILURES = 3; // failed connections in a row before polling starts
  var POLL_EVERY = 4000;
  var POLL_PAGE_SIZE = 200;

  var listeners = [];
  var socket = null;
  var lastId = 0;
  var attempt = 0;
  var retryTimer = null;
  var stableTimer = null;
  var pingTimer = null;
  var lastMessageAt = 0;
  var stopped = false;
  var started = false;
  var pollTimer = null;
  var polling = false;
  var pollInFlight = false;
  var replaced = false;

  var state = 'offline';

  /** Subscribe to every live message (after de-duplication). */
  D.onFileEvent = function (fn) {
    if (typeof fn === 'function') listeners.push(fn);
  };

  function setState(next, detail) {
    state = next;
    var el = document.getElementById('conn');
    if (!el) return;
    el.hidden = false;
    el.dataset.state = state;
    var label = el.querySelector('.conn__label') || el;
    label.textContent = state;
    el.title = detail || {
      connecting: 'Connecting to live updates…',
      connected: 'Live updates are on',
      reconnecting: 'Connection lost: reconnecting…',
      polling: 'Live updates by polling: the WebSocket is unavailable',
      offline: 'Live updates are off'
    }[state] || '';
  }

  function url() {
    var scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    return scheme + '://' + location.host + '/notification/events?after=' + encodeURIComponent(lastId);
  }

  function dispatch(message) {
    listeners.forEach(function (fn) {
      try { fn(message); } catch (e) { window.console && console.error(e); }
    });
  }

  function notify(message) {
    var kind = message.status === 'failed' ? 'error' : message.status === 'processed' ? 'success' : 'info';
    D.toast({
      title: message.title || 'Notification',
      description: message.description || message.status_message || '',
      kind: kind,
      href: message.file_id && location.pathname !== '/f/' + message.file_id + '/'
        ? '/f/' + message.file_id + '/' : null,
      linkText: 'Open file'
    });
  }

  function handle(raw) {
    lastMessageAt = Date.now();
    var message;
    try { message = JSON.parse(raw); } catch (e) { return; }
    apply(message);
  }

  function apply(message) {
    if (!message || typeof message !== 'object' || message.type === 'pong') return;

    if (message.type === 'snapshot') {
      if (message.reset) {
        // Events this page missed are no longer kept: what it shows may be stale.
        D.reloadKeepingToasts();
        return;
      }
      var snapshotId = Number(message.last_event_id) || 0;
      if (snapshotId > lastId) lastId = snapshotId;
    } else if (message.id !== undefined && message.id !== null) {
      var id = Number(message.id);
      if (!(id > lastId)) return; // a duplicate, already applied
      lastId = id;
    }
    if (message.type === 'notification') notify(message);
    dispatch(message);
  }

  // --- the polling fallback ---------------------------------------------------------

  function startPolling() {
    if (polling || stopped) return;
    polling = true;
    poll();
  }

  function stopPolling() {
    polling = false;
    window.clearTimeout(pollTimer);
    pollTimer = null;
  }

  function schedulePoll(delay) {
    window.clearTimeout(pollTimer);
    if (polling) pollTimer = window.setTimeout(poll, delay);
  }

  /** Fetch the durable events after the cursor, page after page, then wait. */
  function poll() {
    if (!polling || pollInFlight) return;
    if (document.visibilityState === 'hidden') {
      schedulePoll(POLL_EVERY);
      return;
    }
    pollInFlight = true;
    var url = '/api/events/?after=' + encodeURIComponent(lastId) + '&page_size=' + POLL_PAGE_SIZE;
    D.api('GET', url).then(function (result) {
      pollInFlight = false;
      if (!polling) return;
      if (result.status === 401 || result.status === 403) {
        stopLive(CLOSE_UNAUTHENTICATED);
        return;
      }
      if (result.status === 410) { // the events it missed were pruned: start afresh
        D.reloadKeepingToasts();
        return;
      }
      if (!result.ok || !result.data) {
        if (state === 'polling') setState('reconnecting');
        schedulePoll(POLL_EVERY);
        return;
      }
      if (!socket || socket.readyState !== WebSocket.OPEN) setState('polling');
      (result.data.results || []).forEach(apply);
      schedulePoll(result.data.next ? 0 : POLL_EVERY);
    });
  }

  /** Live updates cannot go on without signing in again: say so and stop. */
  function stopLive(code) {
    stopped = true;
    stopPolling();
    clearTimers();
    setState('offline', 'Live updates stopped: sign in again');
    D.toast({
      title: 'Live updates stopped',
      description: code === CLOSE_UNAUTHENTICATED
        ? 'Your session has ended. Reload the page to sign in again.'
        : 'This address is not allowed to receive live updates.',
      kind: 'warning',
      timeout: 0
    });
  }

  function clearTimers() {
    window.clearTimeout(retryTimer);
    window.clearTimeout(stableTimer);
    window.clearInterval(pingTimer);
    retryTimer = stableTimer = pingTimer = null;
  }

  function connect() {
    clearTimers();
    if (stopped) return;
    if (navigator.onLine === false) {
      setState('offline', 'This device is offline: waiting for the network');
      return;
    }
    if (state !== 'polling') {
      setState(attempt === 0 && state !== 'reconnecting' ? 'connecting' : 'reconnecting');
    }
    var ws;
    try {
      ws = new WebSocket(url());
    } catch (e) {
      scheduleRetry();
      return;
    }
    socket = ws;

    ws.onopen = function () {
      if (ws !== socket) return;
      lastMessageAt = Date.now();
      stopPolling();
      setState('connected');
      stableTimer = window.setTimeout(function () { attempt = 0; }, STABLE_AFTER);
      pingTimer = window.setInterval(function () {
        if (ws.readyState !== WebSocket.OPEN) return;
        if (Date.now() - lastMessageAt > SILENCE_LIMIT) {
          ws.close(4000, 'silent'); // a half-open connection: start over
          return;
        }
        try { ws.send(JSON.stringify({ type: 'ping' })); } catch (e) { /* onclose follows */ }
      }, PING_EVERY);
    };

    ws.onmessage = function (event) {
      if (ws === socket) handle(event.data);
    };

    ws.onclose = function (event) {
      if (ws !== socket) return;
      socket = null;
      clearTimers();
      if (event.code === CLOSE_UNAUTHENTICATED || event.code === CLOSE_FORBIDDEN_ORIGIN) {
        stopLive(event.code);
        return;
      }
      if (event.code === CLOSE_REPLACED) {
        // Reconnecting would close another tab's socket in turn: poll instead, and
        // take a socket again only when this tab is looked at again.
        replaced = true;
        setState('polling', 'Live updates by polling: too many open tabs or clients');
        startPolling();
        return;
      }
      scheduleRetry();
    };
    // onerror is always followed by onclose, which does the work.
  }

  function scheduleRetry() {
    if (stopped) return;
    if (navigator.onLine === false) {
      setState('offline', 'This device is offline: waiting for the network');
      return;
    }
    var base = Math.min(BACKOFF_MAX, BACKOFF_MIN * Math.pow(2, attempt));
    var delay = Math.min(BACKOFF_MAX, Math.round(base * (0.5 + Math.random() * 0.5) + Math.random() * 250));
    attempt += 1;
    if (attempt >= POLL_AFTER_FAILURES) startPolling();
    if (state !== 'polling') {
      setState('reconnecting', 'Reconnecting in ' + Math.ceil(delay / 1000) + ' s…');
    }
    retryTimer = window.setTimeout(connect, delay);
  }

  /** Reconnect now (the network is back, the tab is visible again). */
  function reconnectSoon() {
    if (stopped || socket) return;
    attempt = 0;
    connect();
  }

  function start() {
    if (started || !window.WebSocket) return;
    started = true;
    var initial = Number(D.readJSON ? D.readJSON('last-event-id', 0) : 0);
    lastId = initial > 0 ? initial : 0;
    window.addEventListener('online', reconnectSoon);
    window.addEventListener('offline', function () {
      if (socket) socket.close(4000, 'offline');
      else setState('offline', 'This device is offline: waiting for the network');
    });
    document.addEventListener('visibilitychange', function () {
      if (document.visibilityState !== 'visible') return;
      if (retryTimer || replaced) {
        replaced = false;
        reconnectSoon();
      }
      if (polling) schedulePoll(0);
    });
    window.addEventListener('pagehide', function () {
      stopped = true;
      clearTimers();
      stopPolling();
      if (socket) socket.close(1000, 'page closed');
    });
    window.addEventListener('pageshow', function (event) {
      if (!event.persisted) return; // restored from the back/forward cache
      stopped = false;
      reconnectSoon();
    });
    connect();
  }

  // Start once the page scripts (deferred, after this one) have subscribed.
  if (document.readyState === 'complete') {
    start();
  } else {
    document.addEventListener('DOMContentLoaded', start);
    window.addEventListener('load', start);
  }
})();
