"""The job dashboard and ordering pages: server-rendered, a little JavaScript, no CDN."""
