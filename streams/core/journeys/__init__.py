"""Journeys: one person's sessions, funnel attempts and goals as a state machine (`journey`),
the engine that applies events to many journeys and keeps their deadlines (`engine`), identity
stitching (`identity`) and the merging of two journeys into one (`merge`), and the applied-offset
markers that make redelivered input harmless (`markers`)."""
