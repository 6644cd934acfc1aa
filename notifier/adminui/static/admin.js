// notifyd admin: refreshes the progress of every live broadcast on the page
// (elements with data-broadcast and data-live) from /admin/progress.json every
// couple of seconds, without reloading. The page works the same without it.
(function () {
  'use strict';
  var interval = parseInt(document.body.getAttribute('data-poll'), 10) || 2000;
  var failures = 0;
  var timer = null;

  function fmt(n) { return Number(n).toLocaleString('en-US'); }
  function all(root, sel) { return Array.prototype.slice.call(root.querySelectorAll(sel)); }
  function liveElements() { return all(document, '[data-broadcast][data-live]'); }

  function setText(el, text) { if (el && el.textContent !== text) { el.textContent = text; } }

  function applyBar(root, bar) {
    var el = root.querySelector('[data-bar="' + bar.name + '"]');
    if (!el) { return; }
    setText(el.querySelector('[data-done]'), fmt(bar.done));
    setText(el.querySelector('[data-total]'), fmt(bar.total));
    var track = el.querySelector('svg');
    if (track) {
      track.setAttribute('aria-label', bar.name + ': ' + fmt(bar.done) + ' of ' + fmt(bar.total) + ' deliveries done');
    }
    bar.segments.forEach(function (seg) {
      var rect = el.querySelector('[data-seg="' + seg.key + '"]');
      if (rect) {
        rect.setAttribute('x', seg.x.toFixed(3));
        rect.setAttribute('width', seg.w.toFixed(3));
      }
      var item = el.querySelector('[data-lg="' + seg.key + '"]');
      if (item) {
        item.classList.toggle('zero', seg.n === 0);
        setText(item.querySelector('[data-n]'), fmt(seg.n));
      }
    });
  }

  function apply(root, p) {
    all(root, '[data-status]').forEach(function (el) {
      setText(el, p.status);
      el.className = 'status status-' + p.status;
    });
    all(root, '[data-togo]').forEach(function (el) { setText(el, fmt(p.to_go)); });
    all(root, '[data-recipients]').forEach(function (el) { setText(el, fmt(p.counts.recipients)); });
    p.bars.forEach(function (bar) { applyBar(root, bar); });
    all(root, 'tr[data-channel]').forEach(function (row) {
      var ch = row.getAttribute('data-channel');
      var counts = ch === 'all' ? p.counts : (p.channels || {})[ch];
      if (!counts) { return; }
      all(row, '[data-cc]').forEach(function (cell) { setText(cell, fmt(counts[cell.getAttribute('data-cc')] || 0)); });
    });
    all(root, '[data-action]').forEach(function (el) {
      el.hidden = p.actions.indexOf(el.getAttribute('data-action')) < 0;
    });
    if (!p.live) {
      root.removeAttribute('data-live');
      all(root, '[data-finished]').forEach(function (el) { el.hidden = false; });
    }
  }

  function showDots(on) {
    all(document, '[data-live-dot]').forEach(function (el) { el.hidden = !on; });
  }

  function schedule(delay) {
    clearTimeout(timer);
    timer = setTimeout(tick, delay);
  }

  function tick() {
    var els = liveElements();
    if (els.length === 0) { showDots(false); return; }
    if (document.hidden) { schedule(interval); return; }
    var ids = [];
    els.forEach(function (el) {
      var id = el.getAttribute('data-broadcast');
      if (ids.indexOf(id) < 0) { ids.push(id); }
    });
    var url = '/admin/progress.json?' + ids.map(function (id) { return 'id=' + encodeURIComponent(id); }).join('&');
    fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'application/json' }, cache: 'no-store' })
      .then(function (res) {
        if (res.status === 401) {
          showDots(false);
          window.location.assign('/admin/?next=' + encodeURIComponent(window.location.pathname + window.location.search));
          return null;
        }
        if (!res.ok) { throw new Error('HTTP ' + res.status); }
        return res.json();
      })
      .then(function (data) {
        if (!data) { return; }
        failures = 0;
        data.broadcasts.forEach(function (p) {
          all(document, '[data-broadcast="' + p.id + '"]').forEach(function (el) { apply(el, p); });
        });
        showDots(liveElements().length > 0);
        schedule(interval);
      })
      .catch(function () {
        // Back off while the server is unreachable, up to half a minute.
        failures++;
        schedule(Math.min(interval * Math.pow(2, failures), 30000));
      });
  }

  if (liveElements().length > 0) {
    showDots(true);
    schedule(interval);
  }
  document.addEventListener('visibilitychange', function () {
    if (!document.hidden && liveElements().length > 0) { schedule(0); }
  });
})();
