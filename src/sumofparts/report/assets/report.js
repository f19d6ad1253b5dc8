// The report's explorer (sumofparts.report.html inlines it into each page); its data is the JSON
// in <script id="sop-data">.
(function () {
  var data = JSON.parse(document.getElementById('sop-data').textContent);
  var ex = data.examples || [];
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) { for (var k in attrs) { if (k === 'class') e.className = attrs[k]; else e.setAttribute(k, attrs[k]); } }
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return 'N/A';
    if (typeof v !== 'number') return String(v);
    if (v === 0) return '0';
    return Math.abs(v) >= 1e-3 ? Number(v.toPrecision(4)).toString() : v.toExponential(2);
  }
  function card(e, g) {
    var c = el('div', {'class': 'card' + (e.tokens ? ' text' : ''), 'data-group': String(g.index)});
    if (g.image) c.appendChild(el('img', {src: g.image, alt: 'group ' + g.index + ' of example ' + e.id}));
    if (e.tokens && g.tokens_in) {
      var p = el('div');
      for (var i = 0; i < e.tokens.length; i++) p.appendChild(el('span', {'class': 'tok' + (g.tokens_in[i] ? ' in' : '')}, e.tokens[i]));
      c.appendChild(p);
    }
    c.appendChild(el('div', null, 'group ' + g.index + ' · weight ' + fmt(g.weight) + ' · c ' + fmt(g.scale)));
    c.appendChild(el('div', null, 'w·c·y = ' + fmt(g.attribution) + ' · ' + g.n_cells + ' cells'));
    var cls = g.agrees === null ? '' : (g.agrees ? 'agree' : 'disagree');
    var verdict = g.agrees === null ? '' : (g.agrees ? ' (agrees with the final prediction)' : ' (final: ' + e.prediction + ')');
    c.appendChild(el('div', {'class': cls}, 'predicts: ' + g.predicted + verdict));
    return c;
  }
  function heat(v) {  // v in [-1, 1] -> the RdBu_r-like colour used by the PNG maps
    var t = Math.max(-1, Math.min(1, v)), r, g, b;
    if (t >= 0) { r = 255 - (255 - 178) * t; g = 255 - (255 - 24) * t; b = 255 - (255 - 43) * t; }
    else { t = -t; r = 255 - (255 - 33) * t; g = 255 - (255 - 102) * t; b = 255 - (255 - 172) * t; }
    return 'rgb(' + Math.round(r) + ',' + Math.round(g) + ',' + Math.round(b) + ')';
  }
  function mapFigure(e, title, m) {
    var f = el('figure', {'class': m.scores ? 'map text' : 'map', 'data-method': title});
    if (m.image) f.appendChild(el('img', {src: m.image, alt: title + ' map of example ' + e.id}));
    if (m.scores && e.tokens) {
      var p = el('div');
      for (var i = 0; i < e.tokens.length; i++) {
        var v = m.peak > 0 ? m.scores[i] / m.peak : 0;
        var s = el('span', {'class': 'tok heat', title: fmt(m.scores[i])}, e.tokens[i]);
        s.style.background = heat(v); s.style.color = Math.abs(v) > 0.7 ? '#fff' : '#000';
        p.appendChild(s);
      }
      f.appendChild(p);
    }
    f.appendChild(el('figcaption', null, title + ' · max |score| ' + fmt(m.peak)));
    return f;
  }
  function legend(text) {
    var d = el('div', {'class': 'legend'});
    d.appendChild(el('span', null, '−max (against)'));
    d.appendChild(el('span', {'class': 'bar'}));
    d.appendChild(el('span', null, '+max (for)'));
    d.appendChild(el('div', {'class': 'muted'}, text + ' Red: supports the explained output; blue: opposes it; white: 0.'));
    return d;
  }
  function show(i) {
    var e = ex[i]; if (!e) return;
    var btns = document.querySelectorAll('#thumbs button');
    for (var b = 0; b < btns.length; b++) btns[b].classList.toggle('active', b === i);
    var gp = document.getElementById('group-panel');
    gp.textContent = '';
    gp.setAttribute('data-example', String(e.id));
    gp.appendChild(el('h3', null, 'Test item ' + e.id + ': label ' + e.label + '; SOP predicts ' + e.prediction +
                                  '; groups weighted for ' + e.target));
    var best = e.groups.filter(function (g) { return !g.zero_weight; });
    var zero = e.groups.filter(function (g) { return g.zero_weight; });
    gp.appendChild(el('h4', null, 'Groups with weight, best first (' + best.length + ')'));
    var r1 = el('div', {'class': 'row best'}); best.forEach(function (g) { r1.appendChild(card(e, g)); }); gp.appendChild(r1);
    gp.appendChild(el('h4', null, 'Zero-weight groups (' + zero.length + '): the selector ignores them'));
    var r2 = el('div', {'class': 'row zero'}); zero.forEach(function (g) { r2.appendChild(card(e, g)); }); gp.appendChild(r2);
    if (e.groups_figure) {
      var d = el('details'); d.appendChild(el('summary', null, 'static figure of these groups (as saved to PNG/SVG)'));
      d.appendChild(el('img', {src: e.groups_figure, alt: 'groups figure', style: 'max-width:100%'})); gp.appendChild(d);
    }
    var ap = document.getElementById('attribution-panel'); ap.textContent = '';
    if (e.attribution) {
      var row = el('div', {'class': 'row maps'});
      row.appendChild(mapFigure(e, 'SOP (Σ over groups containing it of w·c·y; logit units)', e.attribution));
      ap.appendChild(row);
      ap.appendChild(legend('SOP attribution to ' + e.target + ' per ' + (e.tokens ? 'token' : 'pixel') +
                            ': the sum of w·c·y over the groups that contain it.'));
    }
    var mp = document.getElementById('methods-panel'); mp.textContent = '';
    var names = Object.keys(e.methods || {});
    if (names.length) {
      var mrow = el('div', {'class': 'row maps'});
      if (!e.tokens && e.thumbnail) {
        var f0 = el('figure', {'class': 'map'}); f0.appendChild(el('img', {src: e.thumbnail, alt: 'input'}));
        f0.appendChild(el('figcaption', null, 'input')); mrow.appendChild(f0);
      }
      names.forEach(function (n) { mrow.appendChild(mapFigure(e, n, e.methods[n])); });
      mp.appendChild(mrow);
      mp.appendChild(legend('Post-hoc attributions to ' + e.target + ' on the same input; each map in its own units, ' +
                            'scaled by its own largest |score| (shown as "max").'));
    } else {
      mp.appendChild(el('p', {'class': 'muted'}, 'No post-hoc methods in this report.'));
    }
    var errs = Object.keys(e.method_errors || {});
    if (errs.length) {
      var ul = el('ul', {'class': 'errors'});
      errs.forEach(function (n) { ul.appendChild(el('li', null, n + ' failed: ' + e.method_errors[n])); });
      mp.appendChild(ul);
    }
  }
  var strip = document.getElementById('thumbs');
  ex.forEach(function (e, i) {
    var b = el('button', {type: 'button', 'data-index': String(i), title: 'test item ' + e.id + ' (label ' + e.label + ')'});
    if (e.thumbnail) b.appendChild(el('img', {src: e.thumbnail, alt: 'test item ' + e.id}));
    else b.appendChild(el('span', null, e.snippet || ('item ' + e.id)));
    b.appendChild(el('div', null, '#' + e.id + ': ' + e.prediction));
    b.addEventListener('click', function () { show(i); });
    strip.appendChild(b);
  });
  if (ex.length) show(0);
})();
