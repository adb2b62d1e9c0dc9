// ionscreen candidate page: the interactive 3D structure viewer (3Dmol.js, vendored under /static/vendor/3dmol).
(function () {
  "use strict";
  function init() {
    var host = document.getElementById("viewer");
    var data = document.getElementById("structure-cif");
    if (!host || !data) return;
    if (typeof $3Dmol === "undefined") {
      host.textContent = "The 3D viewer could not load (static/vendor/3dmol/3Dmol-min.js).";
      return;
    }
    var cif = JSON.parse(data.textContent);
    var viewer = $3Dmol.createViewer(host, { backgroundColor: "white", antialias: true });
    var model = null;
    // Jmol colours (the legend below uses the same table)
    var ballStick = { sphere: { scale: 0.28, colorscheme: "Jmol" }, stick: { radius: 0.1, colorscheme: "Jmol" } };
    var spacefill = { sphere: { scale: 0.9, colorscheme: "Jmol" } };

    function load(repeat) {
      viewer.clear();
      model = viewer.addModel(cif, "cif");
      viewer.setStyle({}, ballStick);
      viewer.addUnitCell(model, { box: { color: "#555" } });
      if (repeat) viewer.replicateUnitCell(repeat, repeat, repeat, model);
      viewer.zoomTo();
      viewer.render();
    }
    load(0);

    var legend = document.getElementById("legend");
    if (legend) {
      var seen = {};
      model.selectedAtoms({}).forEach(function (a) { seen[a.elem] = true; });
      Object.keys(seen).sort().forEach(function (el) {
        var color = $3Dmol.elementColors.Jmol[el] || $3Dmol.elementColors.defaultColor || 0xff1493;
        var item = document.createElement("span");
        var dot = document.createElement("i");
        dot.style.background = "#" + ("000000" + color.toString(16)).slice(-6);
        item.appendChild(dot);
        item.appendChild(document.createTextNode(el));
        legend.appendChild(item);
      });
    }

    document.querySelectorAll(".viewer-controls button").forEach(function (button) {
      button.addEventListener("click", function () {
        var style = button.getAttribute("data-style");
        if (style === "ballstick") { viewer.setStyle({}, ballStick); viewer.render(); }
        else if (style === "spacefill") { viewer.setStyle({}, spacefill); viewer.render(); }
        else if (style === "supercell") { load(2); }
        else if (style === "reset") { load(0); }
      });
    });
    host.setAttribute("data-rendered", "true");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
