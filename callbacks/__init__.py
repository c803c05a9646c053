"""Lightning callbacks for ARES."""
