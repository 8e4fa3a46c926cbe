// /docs: Swagger UI (from the swagger-ui-bundle package, served at /docs/ui) on /openapi.json.
// A token kept by the page (/?token=...) is filled in for "Try it out".
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  onComplete: () => {
    let token = null;
    try {
      token = localStorage.getItem("stylize-token");
    } catch {
      // no storage: authorize by hand
    }
    if (token) window.ui.preauthorizeApiKey("bearer", token);
  },
});
