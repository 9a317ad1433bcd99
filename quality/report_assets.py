"""The stewards' report's own style sheets and script, written beside its pages under ``assets/``.

They live here as Python strings, so the report needs no package data and no network: the
Content-Security-Policy of every page allows styles and scripts from the report's own files only.
``GX_CSS`` is the small part of Bootstrap 4 (and of GX's own page style) that great-expectations'
Data Docs markup uses; ``GX_JS`` does, without jQuery or Bootstrap, the two things GX's page
scripts did: the "Failed Only" filter and the collapsible "Show more info..." blocks.
"""

from __future__ import annotations

from pathlib import Path

REPORT_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1f2933}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}a{color:#1d4ed8}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}
th,td{border:1px solid #d9e2ec;padding:.35rem .6rem;text-align:left;font-size:.9rem;
vertical-align:top}th{background:#f0f4f8}
.pass{color:#0b6e4f;font-weight:600}.warn{color:#a15c07;font-weight:600}
.fail{color:#b42318;font-weight:600}.unmonitored,.not-run{color:#627d98;font-weight:600}
.cell{display:inline-block;width:.9rem;height:.9rem;margin-right:2px;border-radius:2px}
.cell.pass{background:#2f9e44}.cell.warn{background:#f59f00}.cell.fail{background:#e03131}
code{font-size:.85rem;background:#f0f4f8;padding:0 .2rem}.muted{color:#627d98}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.value{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,monospace;
font-size:.85rem}
"""

GX_CSS = """
*,::after,::before{box-sizing:border-box}
body{margin:0;font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;font-size:.95rem;
line-height:1.5;color:#212529;background:#fff}
a{color:#1d4ed8;text-decoration:none}a:hover{text-decoration:underline}
h4,h5,h6{margin:0 0 .5rem;font-weight:500;line-height:1.2}h4{font-size:1.4rem}
h5{font-size:1.15rem}h6,.h6{font-size:1rem;font-weight:600}p{margin:0 0 1rem}
.lead{font-size:1.05rem;font-weight:300}code{font-size:.85rem;color:#b42318}
.ss-nav{margin:0;padding:.6rem 1.5rem;border-bottom:1px solid #dee2e6;background:#f8fafc}
.navbar{display:flex;align-items:center;padding:.5rem 1.5rem;border-bottom:1px solid #dee2e6}
.navbar .navbar-brand{display:none}
.breadcrumb{display:flex;flex-wrap:wrap;list-style:none;margin:0;padding:.4rem .8rem;
border-radius:.25rem;background:#f0f4f8}
.breadcrumb-item+.breadcrumb-item::before{content:"/";padding:0 .5rem;color:#6c757d}
.breadcrumb-item.active{color:#6c757d}
.container-fluid{width:100%;padding:1rem 1.5rem}.container-fluid .container-fluid{padding:0}
.row{display:flex;flex-wrap:wrap;margin:0 -.75rem}
[class*="col-"]{position:relative;width:100%;padding:0 .75rem}
.col-12{flex:0 0 100%;max-width:100%}.col-6{flex:0 0 50%;max-width:50%}
@media (min-width:768px){
.col-md-2{flex:0 0 16.667%;max-width:16.667%}.col-md-10{flex:0 0 83.333%;max-width:83.333%}
.d-md-block{display:block!important}.d-md-inline-flex{display:inline-flex!important}
.pl-md-4{padding-left:1.5rem!important}.pr-md-3{padding-right:1rem!important}}
@media (min-width:992px){
.col-lg-2{flex:0 0 16.667%;max-width:16.667%}.col-lg-10{flex:0 0 83.333%;max-width:83.333%}}
.d-none{display:none}.d-flex{display:flex}.align-items-center{align-items:center}
.justify-content-center{justify-content:center}.float-left{float:left}
.sticky{position:sticky;top:1rem}
.m-0{margin:0!important}.mb-0{margin-bottom:0!important}.mb-1{margin-bottom:.25rem!important}
.mb-2{margin-bottom:.5rem!important}.mb-3{margin-bottom:1rem!important}
.mb-4{margin-bottom:1.5rem!important}.mt-0{margin-top:0!important}
.mt-1{margin-top:.25rem!important}.mt-3{margin-top:1rem!important}
.m-2{margin:.5rem!important}.ml-1{margin-left:.25rem!important}
.ml-2{margin-left:.5rem!important}.mr-2{margin-right:.5rem!important}
.p-0{padding:0!important}.p-1{padding:.25rem!important}.p-2{padding:.5rem!important}
.p-3{padding:1rem!important}.px-0{padding-left:0!important;padding-right:0!important}
.pb-1{padding-bottom:.25rem!important}
.ge-section{clear:both;margin-bottom:1.5rem;padding-bottom:1rem}
.card{display:flex;flex-direction:column;margin-bottom:1rem;border:1px solid #d9e2ec;
border-radius:.25rem;background:#fff}
.card-header{padding:.5rem .75rem;background:#f0f4f8;border-bottom:1px solid #d9e2ec}
.card-body{padding:.75rem;overflow:auto}.card-text{margin-bottom:.25rem}
.btn-group{display:inline-flex}.btn{display:inline-block;padding:.2rem .6rem;
border:1px solid #1d4ed8;color:#1d4ed8;background:#fff;cursor:pointer;font-size:.85rem}
.btn-group .btn:first-child{border-radius:.25rem 0 0 .25rem}
.btn-group .btn:last-child{border-radius:0 .25rem .25rem 0;border-left:0}
.btn.active{background:#1d4ed8;color:#fff}
.btn-group-toggle input{position:absolute;clip:rect(0,0,0,0);pointer-events:none}
.nav{display:flex;flex-direction:column;list-style:none;margin:0;padding:0}
.nav-link{display:block;padding:.25rem .5rem;word-break:break-all}
.alert{padding:.6rem 1rem;margin-bottom:.75rem;border:1px solid transparent;border-radius:.25rem}
.alert-secondary{color:#383d41;background:#e2e3e5;border-color:#d6d8db}
.table-responsive{display:block;width:100%;overflow-x:auto}
table{border-collapse:collapse}
.table{width:100%;margin-bottom:1rem}
.table td,.table th{padding:.5rem;vertical-align:top;border-top:1px solid #dee2e6;text-align:left}
.table thead th{border-bottom:2px solid #dee2e6}
.table-sm td,.table-sm th{padding:.25rem .4rem}
.table-bordered,.table-bordered td,.table-bordered th{border:1px solid #dee2e6}
.table-bordered td,.table-bordered th{padding:.2rem .5rem}
.show-scrollbars{overflow:auto;max-height:80vh}
.badge{display:inline-block;padding:.15em .4em;font-size:80%;font-weight:600;line-height:1.2;
border-radius:.25rem;white-space:pre-wrap}
.badge-secondary{color:#fff;background:#6c757d}.badge-danger{color:#fff;background:#b42318}
.text-danger{color:#b42318}.text-success{color:#0b6e4f}.text-warning{color:#a15c07}
.fas{font-style:normal;font-weight:700}
.fa-check-circle::before{content:"\\2714"}.fa-times::before{content:"\\2716"}
.fa-exclamation-triangle::before{content:"\\26A0"}.fa-question-circle::before{content:"?"}
.fa-comment::before{content:"\\1F4AC"}
.collapse:not(.show){display:none}
.cooltip{display:inline-block;position:relative;cursor:help}
.cooltip .top{display:none;position:absolute;z-index:10;left:50%;top:-6px;min-width:200px;
transform:translate(-50%,-100%);padding:.5rem 1rem;color:#fff;background:#222;border-radius:8px;
font-size:13px;font-weight:400}
.cooltip:hover .top{display:block}
.gx-hidden{display:none!important}
"""

GX_JS = """\
"use strict";
// great-expectations' Data Docs behaviour without jQuery or Bootstrap (and no inline script).
document.addEventListener("DOMContentLoaded", function () {
  function failedOnly(on) {
    document.querySelectorAll(".hide-succeeded-validation-target-child").forEach(function (el) {
      if (el.parentElement) { el.parentElement.classList.toggle("gx-hidden", on); }
    });
    document.querySelectorAll(".hide-succeeded-validation-target").forEach(function (el) {
      el.classList.toggle("gx-hidden", on);
    });
    var blocks = ".hide-succeeded-validations-column-section-target-child";
    document.querySelectorAll(blocks).forEach(function (el) {
      var section = el.parentElement && el.parentElement.parentElement;
      if (!section) { return; }
      section.classList.toggle("gx-hidden", on);
      document.querySelectorAll("a.nav-link").forEach(function (a) {
        if (section.id && a.getAttribute("href") === "#" + section.id) {
          a.classList.toggle("gx-hidden", on);
        }
      });
    });
  }
  var filters = document.querySelectorAll("[data-gx-filter]");
  filters.forEach(function (label) {
    label.addEventListener("click", function () {
      filters.forEach(function (other) { other.classList.toggle("active", other === label); });
      failedOnly(label.getAttribute("data-gx-filter") === "failed");
    });
  });
  document.querySelectorAll("a[data-toggle=collapse]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      var target = document.getElementById((link.getAttribute("href") || "").slice(1));
      if (!target) { return; }
      event.preventDefault();
      var open = target.classList.toggle("show");
      link.setAttribute("aria-expanded", open ? "true" : "false");
    });
  });
});
"""

FILES = {"report.css": REPORT_CSS, "gx.css": GX_CSS, "gx.js": GX_JS}


def write_assets(out: Path) -> Path:
    """Write the files under ``out/assets``; returns that folder."""
    folder = out / "assets"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (folder / name).write_text(text.lstrip("\n"), encoding="utf-8")
    return folder
