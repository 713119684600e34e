-- The service's schema as the last version without Alembic migrations made it (create_all,
-- commit 46b09f0), dumped from SQLite; the same DDL runs on PostgreSQL. Tests start from it.
CREATE TABLE studies (
	id VARCHAR(32) NOT NULL,
	source VARCHAR(16) NOT NULL,
	study_uid VARCHAR(128),
	calling_ae VARCHAR(32),
	name VARCHAR(200) NOT NULL,
	received_at FLOAT NOT NULL,
	last_image_at FLOAT NOT NULL,
	updated_at FLOAT NOT NULL,
	state VARCHAR(16) NOT NULL,
	read_status VARCHAR(16) NOT NULL,
	priority FLOAT,
	abnormal FLOAT,
	findings TEXT NOT NULL,
	probabilities_json TEXT NOT NULL,
	site_priority FLOAT,
	key_image_id VARCHAR(64),
	error TEXT NOT NULL,
	predicted_at FLOAT,
	heatmaps_state VARCHAR(16) NOT NULL,
	explained_at FLOAT,
	dicom_results_state VARCHAR(16) NOT NULL,
	dicom_results_info TEXT NOT NULL,
	new_images_at FLOAT,
	warnings TEXT NOT NULL,
	patient_id VARCHAR(64) NOT NULL,
	accession VARCHAR(64) NOT NULL,
	patient_age VARCHAR(16) NOT NULL,
	patient_sex VARCHAR(16) NOT NULL,
	study_date VARCHAR(16) NOT NULL,
	views VARCHAR(64) NOT NULL,
	body_parts VARCHAR(64) NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_studies_received_at ON studies (received_at);
CREATE INDEX ix_studies_study_uid ON studies (study_uid);
CREATE INDEX ix_studies_state ON studies (state);
CREATE INDEX ix_studies_heatmaps_state ON studies (heatmaps_state);
CREATE INDEX ix_studies_priority ON studies (priority);
CREATE INDEX ix_studies_dicom_results_state ON studies (dicom_results_state);
CREATE INDEX ix_studies_read_status ON studies (read_status);
CREATE TABLE images (
	id VARCHAR(64) NOT NULL,
	study_id VARCHAR(32) NOT NULL,
	filename VARCHAR(200) NOT NULL,
	format VARCHAR(16) NOT NULL,
	size_bytes INTEGER NOT NULL,
	state VARCHAR(16) NOT NULL,
	error TEXT NOT NULL,
	probabilities_json TEXT NOT NULL,
	abnormal FLOAT,
	site_priority FLOAT,
	width INTEGER,
	height INTEGER,
	sop_instance_uid VARCHAR(128),
	modality VARCHAR(16) NOT NULL,
	view_position VARCHAR(16) NOT NULL,
	body_part VARCHAR(32) NOT NULL,
	received_at FLOAT NOT NULL,
	processed_at FLOAT,
	attempts INTEGER NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(study_id) REFERENCES studies (id)
);
CREATE INDEX ix_images_study_id ON images (study_id);
CREATE INDEX ix_images_received_at ON images (received_at);
CREATE INDEX ix_images_state ON images (state);
CREATE TABLE heatmaps (
	image_id VARCHAR(64) NOT NULL,
	finding VARCHAR(64) NOT NULL,
	probability FLOAT NOT NULL,
	threshold FLOAT NOT NULL,
	box_json TEXT NOT NULL,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (image_id, finding),
	FOREIGN KEY(image_id) REFERENCES images (id)
);
