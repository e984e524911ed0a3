"""Token state shared by every worker and replica, and kept across restarts."""
