"""dltool's project templates (packaged as `dltool.templates`)."""
