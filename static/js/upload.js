/* DwellFi uploads: the one place the pages send a file's bytes.
 *
 * `DwellFi.upload(file, options)` sends one File as the multipart field `file` of
 * the files API: POST /api/files/ adds a file, PUT /api/files/ID/ replaces one's
 * content. It reports the bytes sent as a fraction (0..1) through
 * `options.onProgress` and resolves — never rejects — with the answer:
 * {ok, status (0 when the request did not reach the server), data (the file
 * resource, or the error body, as JSON), text, retryAfter (the header, or null)}.
 *
 * `DwellFi.uploadResumable(file, options)` sends a large File to /api/uploads/ on
 * the tus protocol with tus-js-client (vendor/tus), a chunk of
 * `options.chunkSize` bytes a request, going on from the server's offset after a
 * failed chunk; `pause()`, `resume()` and `discard()` control it and `done` is a
 * promise of the same answer as `upload`'s, `data` being the created file's
 * resource. With `options.replaces` (a file's id) the upload becomes that file's
 * new content, as a PUT does, and `data` is the replaced file's resource. The
 * upload's URL is kept in localStorage (tus-js-client's URL storage) under a
 * fingerprint of the file, the user (and the file it replaces) until it is
 * complete, so choosing the same file again, after a reload too, goes on where it
 * stopped;
 * `DwellFi.unfinishedUploads(userId)` lists what is kept, as far as the server
 * still has it. `DwellFi.uploadLimits(element)` reads the limits a page renders
 * (templates/files/_upload_limits.html): which way a file goes, and its limit.
 */
(function () {
  'use strict';

  var D = window.DwellFi;

  /** Send `file` with `options.method` (POST or PUT) to `options.url`. */
  D.upload = function (file, options) {
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      xhr.open(options.method, options.url);
      xhr.setRequestHeader('X-CSRFToken', D.csrfToken());
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.upload.addEventListener('progress', function (event) {
        if (event.lengthComputable && event.total && options.onProgress) {
          options.onProgress(event.loaded / event.total);
        }
      });
      xhr.addEventListener('load', function () {
        var data = null;
        try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch (e) { data = null; }
        resolve({
          ok: xhr.status >= 200 && xhr.status < 300,
          status: xhr.status,
          data: data,
          text: xhr.responseText,
          retryAfter: xhr.getResponseHeader('Retry-After')
        });
      });
      var unsent = function () { resolve({ ok: false, status: 0, data: null, text: '', retryAfter: null }); };
      xhr.addEventListener('error', unsent);
      xhr.addEventListener('abort', unsent);

      var body = new FormData();
      body.append('file', file, file.name);
      xhr.send(body);
    });
  };

  /**
   * The upload limits an element's data attributes carry
   * (templates/files/_upload_limits.html): `resumable(file)` says whether a file
   * goes resumably (larger than a chunk, where tus-js-client works), `limit(file)`
   * the largest size it may have then, as `{bytes, label}`.
   */
  D.uploadLimits = function (element) {
    var data = element.dataset;
    var from = window.tus && window.tus.isSupported && Number(data.resumableFrom) > 0
      ? Number(data.resumableFrom) : Infinity;
    var single = Number(data.maxBytes) > 0 ? Number(data.maxBytes) : Infinity;
    return {
      chunkBytes: Number(data.chunkBytes),
      userId: data.userId,
      canResume: from !== Infinity,
      resumable: function (file) { return file.size > from; },
      limit: function (file) {
        return file.size > from
          ? { bytes: Number(data.maxResumableBytes), label: data.maxResumableLabel }
          : { bytes: single, label: data.maxLabel || D.formatSize(single) };
      }
    };
  };

  var ENDPOINT = '/api/uploads/';
  // Waits before each retry of a failed chunk (ms): about a minute of a dropped link.
  var RETRY_DELAYS = [0, 1000, 3000, 5000, 10000, 20000, 20000];

  function storageKeyPrefix(userId) {
    return 'tus::dwellfi:' + userId + ':';
  }

  /** tus-js-client's fingerprint, scoped to the signed-in user; a replacement's
   * is scoped to its file too, and is not listed among the unfinished uploads. */
  function fingerprint(userId, replaces) {
    var scope = replaces ? 'dwellfi-replace:' + userId + ':' + replaces + ':'
                         : 'dwellfi:' + userId + ':';
    return function (file) {
      return Promise.resolve([scope + file.name, file.type, file.size,
                              file.lastModified].join('-'));
    };
  }

  function answer(response) {
    if (!response) return { ok: false, status: 0, data: null, text: '', retryAfter: null };
    var text = response.getBody() || '';
    var data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    var status = response.getStatus();
    return { ok: false, status: status, data: data, text: text,
             retryAfter: response.getHeader('Retry-After') || null };
  }

  D.uploadResumable = function (file, options) {
    var fileId = null;
    var settle;
    var done = new Promise(function (resolve) { settle = resolve; });
    var metadata = { filename: file.name, filetype: file.type || 'application/json' };
    if (options.replaces) metadata.replaces = String(options.replaces);
    var upload = new window.tus.Upload(file, {
      endpoint: ENDPOINT,
      chunkSize: options.chunkSize,
      retryDelays: RETRY_DELAYS,
      metadata: metadata,
      headers: { 'X-CSRFToken': D.csrfToken() },
      fingerprint: fingerprint(options.userId, options.replaces),
      removeFingerprintOnSuccess: true,
      onProgress: function (sent, total) {
        if (options.onProgress && total) options.onProgress(sent / total);
      },
      onAfterResponse: function (request, response) {
        // The last chunk's answer names the file it made.
        var id = response.getHeader('DwellFi-File-Id');
        if (id) fileId = id;
      },
      onSuccess: function () {
        createdFile().then(function (id) {
          if (id === null) {
            settle({ ok: false, status: 0, data: null, text: '', retryAfter: null });
            return;
          }
          D.api('GET', '/api/files/' + encodeURIComponent(id) + '/').then(function (result) {
            var resource = result.ok && result.data ? result.data : { id: Number(id) };
            settle({ ok: true, status: 201, data: resource, text: '', retryAfter: null });
          });
        });
      },
      onError: function (error) { settle(answer(error.originalResponse)); }
    });

    /** The file the upload made: named by the last chunk's answer or, when that
     * answer was lost and the resumed upload found every byte there, by the
     * upload's own resource (`file`). */
    function createdFile() {
      if (fileId) return Promise.resolve(fileId);
      return D.api('GET', upload.url).then(function (result) {
        var id = result.ok && result.data ? result.data.file : null;
        return id === null || id === undefined ? null : String(id);
      });
    }

    function start() {
      return upload.findPreviousUploads().then(function (previous) {
        if (previous.length) {
          upload.resumeFromPreviousUpload(previous[0]);
          if (options.onResume) options.onResume();
        }
        upload.start();
      });
    }
    start();
    return {
      done: done,
      pause: function () { return upload.abort(); },
      resume: function () { upload.start(); },
      discard: function () {
        return upload.abort(true).then(function () {
          settle({ ok: false, status: -1, data: null, text: '', retryAfter: null });
        });
      }
    };
  };

  /**
   * The user's unfinished resumable uploads kept by this browser, as the server has
   * them: a promise of [{name, size, offset, key, url}]. Those the server no longer
   * has (expired, finished, deleted) are forgotten.
   */
  D.unfinishedUploads = function (userId) {
    var storage = window.tus && window.tus.defaultOptions.urlStorage;
    if (!storage) return Promise.resolve([]);
    return storage.findAllUploads().then(function (stored) {
      var ours = stored.filter(function (entry) {
        return entry.urlStorageKey.indexOf(storageKeyPrefix(userId)) === 0 && entry.uploadUrl;
      });
      return Promise.all(ours.map(function (entry) {
        return D.api('GET', entry.uploadUrl).then(function (result) {
          if (result.ok && result.data && result.data.file === null) {
            return { name: (entry.metadata || {}).filename || 'file', size: entry.size,
                     offset: result.data.offset, key: entry.urlStorageKey, url: entry.uploadUrl };
          }
          if (result.status === 404 || result.status === 410 || result.ok) {
            storage.removeUpload(entry.urlStorageKey);
          }
          return null;
        });
      }));
    }).then(function (uploads) { return uploads.filter(Boolean); });
  };

  /** Forget an unfinished upload and have the server delete its bytes. */
  D.discardUpload = function (entry) {
    window.tus.defaultOptions.urlStorage.removeUpload(entry.key);
    return window.tus.Upload.terminate(entry.url, {
      headers: { 'X-CSRFToken': D.csrfToken() }, retryDelays: [0, 1000]
    }).catch(function () { return null; });
  };
})();
