FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md setup.py ./
COPY build_support ./build_support
COPY streams ./streams
RUN pip install . && useradd --system --home /app conversions && mkdir -p /app/var && chown conversions /app/var
USER conversions
EXPOSE 6066
ENTRYPOINT ["conversions"]
CMD ["worker"]
