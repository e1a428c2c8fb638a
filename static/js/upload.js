/* DwellFi uploads: the one place the pages send a file's bytes.
 *
 * `DwellFi.upload(file, options)` sends one File as the multipart field `file` of
 * the files API: POST /api/files/ adds a file, PUT /api/files/ID/ replaces one's
 * content. It reports the bytes sent as a fraction (0..1) through
 * `options.onProgress` and resolves — never rejects — with the answer:
 * {ok, status (0 when the request did not reach the server), data (the file
 * resource, or the error body, as JSON), text, retryAfter (the header, or null)}.
 * A resumable (tus) uploader for large files can take over behind this function:
 * the pages only see its progress and its answer.
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
})();
